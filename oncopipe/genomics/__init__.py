"""Genomics stage cores: FASTQ validation, alignment, variant calling, variant tables."""
