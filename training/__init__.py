"""Training, evaluation, explanation, pruning and serving of the multimodal response model.

Imported only by the training image, the serving container and the benchmarks: torch,
captum, scikit-learn and matplotlib are imported here freely.
"""
