"""Prose of the Python documentation (Debian `python3-doc`), from its reStructuredText sources.

Sphinx ships every page's source as `_sources/**/*.rst.txt` beside the HTML. Only prose paragraphs
are taken: directives (`.. note::`), indented blocks (code, options), headings, tables and doctest
lines are skipped, and inline roles (``:func:`len` ``) keep just their text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from expert_router.corpora.text import squash
from expert_router.errors import UserError

PYTHON_DOCS_GLOBS = ("/usr/share/doc/python3/html/_sources", "/usr/share/doc/python3.*/html/_sources")
"""Where Debian's python3-doc puts the page sources (one folder per Python version)."""

SECTIONS = ("tutorial", "howto", "faq", "library", "reference")
"""Parts of the manual with running prose (not the C API, not the change logs)."""

_ROLE = re.compile(r":[\w:+-]+:`(?:[^`<]*<)?~?!?([^`>]*)>?`")
_LITERAL = re.compile(r"``([^`]*)``")
_EMPHASIS = re.compile(r"\*{1,2}([^*\n]+)\*{1,2}")
_LINK = re.compile(r"`([^`<]*?)\s*(?:<[^`>]*>)?`_{1,2}")
_HEADING = re.compile(r"^([=\-~^\"'*#+])\1{2,}\s*$")


def python_docs_dir() -> Path:
    """The `_sources` folder of the installed Python documentation, or a UserError saying how to get it."""
    override = os.environ.get("EXPERT_ROUTER_PYTHON_DOCS")
    candidates = (
        [Path(override)]
        if override
        else sorted((p for pattern in PYTHON_DOCS_GLOBS for p in Path("/").glob(pattern.lstrip("/"))), reverse=True)
    )
    for candidate in candidates:
        if (candidate / "tutorial").is_dir():
            return candidate
    raise UserError(
        "the Python documentation is not installed: run `sudo apt-get install python3-doc` "
        "(or `make setup`), or set EXPERT_ROUTER_PYTHON_DOCS to its html/_sources folder"
    )


def prose(paragraph: str) -> str | None:
    """One paragraph with its inline markup resolved, or None when it is not prose."""
    lines = paragraph.splitlines()
    if not lines or lines[0][:1].isspace() or lines[0].startswith(("..", ">>>", "+-", "|", "* ", "- ", "#.")):
        return None
    if any(_HEADING.match(line) for line in lines) or paragraph.rstrip().endswith("::"):
        return None
    text = _LINK.sub(r"\1", _ROLE.sub(r"\1", paragraph))
    text = _EMPHASIS.sub(r"\1", _LITERAL.sub(r"\1", text))
    return squash(text)


def read_python_docs(root: Path, sections: tuple[str, ...] = SECTIONS) -> Iterator[tuple[str, str]]:
    """(page, paragraph) for every prose paragraph of the documentation under `root`."""
    for section in sections:
        for path in sorted((root / section).rglob("*.rst.txt")):
            page = path.relative_to(root).as_posix().removesuffix(".rst.txt")
            for paragraph in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
                text = prose(paragraph)
                if text:
                    yield page, text
