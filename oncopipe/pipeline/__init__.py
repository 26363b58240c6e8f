"""The model pipeline as a SageMaker Pipeline definition, its validation and its local runner.

- :mod:`oncopipe.pipeline.builder`: the definition format's expressions and parts, and the
  reference check (no SageMaker SDK, no AWS call).
- :mod:`oncopipe.pipeline.definition`: the model pipeline's definition JSON, built from them.
- :mod:`oncopipe.pipeline.validate`: checks against botocore's SageMaker service model and a
  hand-written schema of the top level.
- :mod:`oncopipe.pipeline.local_runner`: runs the same definition step by step on this machine
  (its expressions and conditions resolved by :mod:`oncopipe.pipeline.expressions`).
"""
