"""The panel reference on object storage: fetched by every genomics job, indexed once.

The artifacts bucket holds ``panel.fa`` and ``panel.json`` under the reference prefix
(:data:`oncopipe.layout.ARTIFACTS_REFERENCE`); the first job that finds no BWA index (and
``.fai``) beside them builds it and stores it there for the others.
"""

from __future__ import annotations

import logging
from pathlib import Path

from oncopipe.errors import InputError
from oncopipe.genomics.align import INDEX_SUFFIXES, ensure_index
from oncopipe.genomics.panel import Panel
from oncopipe.storage import ObjectStore

logger = logging.getLogger(__name__)


def fetch_reference(
    store: ObjectStore, bucket: str, prefix: str, workdir: Path
) -> tuple[Path, Panel, str]:
    """Download the reference and its index; build and store the index once if missing.

    Returns:
        (FASTA path, panel annotation, the FASTA's ETag for the parameters hash).

    Raises:
        InputError: the reference or its annotation is missing.
    """
    fasta_key, panel_key = f"{prefix}panel.fa", f"{prefix}panel.json"
    fasta_ref = store.head(bucket, fasta_key)
    if fasta_ref is None or store.head(bucket, panel_key) is None:
        raise InputError(
            f"s3://{bucket}/{prefix}",
            "reference missing: upload panel.fa and panel.json there (see README)",
        )
    fasta = workdir / "panel.fa"
    store.download_file(bucket, fasta_key, str(fasta))
    store.download_file(bucket, panel_key, str(workdir / "panel.json"))
    extras = [*INDEX_SUFFIXES, ".fai"]
    present = [s for s in extras if store.exists(bucket, fasta_key + s)]
    for suffix in present:
        store.download_file(bucket, fasta_key + suffix, f"{fasta}{suffix}")
    if len(present) < len(extras):
        ensure_index(fasta)
        for suffix in extras:
            store.upload_file(f"{fasta}{suffix}", bucket, fasta_key + suffix,
                              tags={"step": "reference-index"})  # fmt: skip
        logger.info("built and stored the BWA index of %s", fasta_key)
    return fasta, Panel.load(workdir / "panel.json"), fasta_ref.etag
