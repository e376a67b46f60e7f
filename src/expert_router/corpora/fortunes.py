"""Entries of one fortune file (Debian `fortunes`): texts separated by lines holding only `%`."""

from __future__ import annotations

import re
from pathlib import Path

_SEPARATOR = re.compile(r"^%\s*$", re.MULTILINE)


def fortune_entries(path: Path) -> list[str]:
    """The stripped entries of fortune file `path`, in file order, empty ones dropped."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [entry.strip() for entry in _SEPARATOR.split(text) if entry.strip()]
