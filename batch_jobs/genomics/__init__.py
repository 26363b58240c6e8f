"""AWS Batch adapter of the genomics stage (container entry point)."""
