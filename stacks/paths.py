"""Where the infrastructure finds the workload code: resolved from this file, never the CWD."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARY_DIR = REPO_ROOT / "oncopipe"
LAMBDAS_DIR = REPO_ROOT / "lambdas"
BUILD_DIR = REPO_ROOT / ".build"
