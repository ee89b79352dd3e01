from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("frandi: the CLI arrives with the search service", file=sys.stderr)
    return 2
