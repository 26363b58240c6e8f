"""SageMaker Processing entries: thin adapters over the oncopipe cores."""
