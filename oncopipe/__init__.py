"""oncopipe runtime library: shared by every stage, the CLI and the local mode.

Nothing in this package imports ``aws_cdk``; the infrastructure in ``stacks/`` imports
from here (table schemas, key layout), never the other way round.
"""

from __future__ import annotations

__version__ = "0.1.0"
