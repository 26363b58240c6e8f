"""``python -m oncopipe``: the oncopipe command line."""

from __future__ import annotations

from oncopipe.cli import main

if __name__ == "__main__":
    main()
