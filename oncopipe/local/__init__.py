"""The embedded local mode: the platform on a laptop, no AWS account needed.

``oncopipe local up`` starts a moto server on 127.0.0.1 (a free port) and creates the
resources the stacks define (buckets with KMS and versioning, S3 -> EventBridge -> SQS,
the Glue catalog, the pseudonym secret), named from the same cdk.json configuration.
``oncopipe local run`` uploads a cohort to the ingest bucket and a worker consumes the S3
events, running each stage's Lambda handler in a subprocess with the Lambda contract and
following the same flow as the state machine.
"""
