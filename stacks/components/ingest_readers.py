"""The roles allowed to read the ingest bucket (PHI), named so its bucket policy can list them.

The ingest bucket's policy denies object reads and listing to every principal but these
roles and the data administrators of the configuration. The roles live in the compute
stacks, which import the bucket from the stateful stack; a bucket policy referring to
their ARNs would make the stateful stack depend on them: a CloudFormation dependency
cycle. The roles therefore get deterministic names (``<project>-<env>-<stage>``) from this
module, and the policy in the stateful stack builds the same ARNs from the same names,
with no reference between the stacks. A reader added here and not given the name (or
the other way round) fails ``tests/infrastructure/test_infrastructure.py``.
"""

from __future__ import annotations

from oncopipe.deployment import EnvConfig

#: stage -> role name suffix of every role that reads ingest objects.
INGEST_READERS = {
    "router": "ingest-router",
    "quarantine_on_error": "ingest-quarantine",
    "reconcile": "ingest-reconcile",
    "dicom_deid": "dicom-deid",
    "align_job": "genomics-align",
    "notes": "notes-processing",
}


def ingest_reader_role_name(config: EnvConfig, stage: str) -> str:
    """Return the IAM role name of an ingest reader (``oncopipe-dev-ingest-router``).

    Raises:
        KeyError: ``stage`` is not an ingest reader of :data:`INGEST_READERS`.
    """
    return f"{config.prefix}-{INGEST_READERS[stage]}"
