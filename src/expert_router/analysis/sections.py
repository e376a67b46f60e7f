"""One table of the report, in its own module so that the analyses that build tables (findings.py) and
the report that renders them do not import each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Section:
    """One table of the report."""

    title: str
    columns: list[tuple[str, str]]
    rows: list[dict[str, Any]]
    note: str = ""
