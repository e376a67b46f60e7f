"""Reading dictd dictionaries (`NAME.index` + `NAME.dict.dz`), the format of Debian's `dict-*` packages.

The index holds one line per headword: the word, then the entry's byte offset and length in the
uncompressed text, both in dictd's base-64 digits. A `.dict.dz` file is gzip (dictzip adds random
access, which we do not need: a whole dictionary fits in memory). Several headwords may share one
entry (an abbreviation and its expansion); each entry is yielded once, in text order.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from expert_router.errors import UserError

DICTD_DIRS = ("/usr/share/dictd", "/usr/local/share/dictd", "/opt/homebrew/share/dictd")
"""Where Debian, source installs and Homebrew put dictd databases."""

_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_VALUE = {c: i for i, c in enumerate(_DIGITS)}


@dataclass(frozen=True)
class Entry:
    """One dictionary entry: the headwords that point at it and its raw text."""

    headwords: tuple[str, ...]
    text: str


def decode_number(digits: str) -> int:
    """A dictd index number: base 64, most significant digit first."""
    value = 0
    for char in digits:
        value = value * 64 + _VALUE[char]
    return value


def dictd_path(name: str, package: str) -> Path:
    """The `.index` file of dictionary `name`, or a UserError naming the Debian package to install."""
    override = os.environ.get("EXPERT_ROUTER_DICTD")
    for folder in [override] if override else DICTD_DIRS:
        index = Path(folder) / f"{name}.index"
        if index.is_file():
            return index
    raise UserError(
        f"the dictionary {name!r} is not installed: run `sudo apt-get install {package}` "
        "(or `make setup`), or set EXPERT_ROUTER_DICTD to the folder of its .index file"
    )


def read_dictd(index: Path) -> Iterator[Entry]:
    """Every entry of the dictionary whose index file is `index`, skipping dictd's `00-database-*` notes.

    The last few dictionaries read are kept: the demo corpus takes several subjects from one dictionary.
    """
    return iter(_entries(index.resolve(), index.stat().st_mtime_ns))


@lru_cache(maxsize=3)
def _entries(index: Path, mtime_ns: int) -> tuple[Entry, ...]:
    return tuple(_parse(index))


def _parse(index: Path) -> Iterator[Entry]:
    data_path = index.with_name(index.name.removesuffix(".index") + ".dict.dz")
    if not data_path.is_file():
        data_path = data_path.with_suffix("")  # an uncompressed NAME.dict
    try:
        data = gzip.decompress(data_path.read_bytes()) if data_path.suffix == ".dz" else data_path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"cannot read dictionary data {data_path}: {exc}") from None
    spans: dict[tuple[int, int], list[str]] = {}
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split("\t")
        if len(fields) < 3 or fields[0].startswith("00"):
            continue
        span = (decode_number(fields[1]), decode_number(fields[2]))
        spans.setdefault(span, []).append(fields[0])
    for (offset, length), words in sorted(spans.items()):
        text = data[offset : offset + length].decode("utf-8", errors="replace")
        yield Entry(tuple(words), text)
