"""Where the source tree is, for defaults that point into it (schemas/, .run/)."""

from __future__ import annotations

from functools import cache
from pathlib import Path


@cache
def source_root() -> Path | None:
    """The repository folder this kernel runs from, or None when installed elsewhere."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "kernel").is_dir() and (parent / "schemas").is_dir():
            return parent
    return None
