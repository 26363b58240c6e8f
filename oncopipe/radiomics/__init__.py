"""Radiomics stage: PyRadiomics features of de-identified volumes and their masks."""
