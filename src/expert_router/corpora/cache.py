"""Named corpora kept, once built, in the user's cache folder.

The demo corpus is built by parsing whole dictionaries: about 14 s of one core on a 2-core machine
(most of it regular expressions over GCIDE) for 1,920 short documents, and every `classifier fit demo`,
every `load` that draws prompts by cluster and every experiment cell built it again. Read back from the
cache it takes milliseconds.

A cached corpus is named by a fingerprint of what it was built from: the code of this package (the
readers and the topic recipe) and the name, size and modification time of every file under the data
folders the readers use (Debian's dictionaries, fortunes, Python manual). An upgraded package or a
changed reader builds it afresh. The folder is `$EXPERT_ROUTER_CACHE_DIR`, else
`$XDG_CACHE_HOME/expert-router`, else `~/.cache/expert-router`; `EXPERT_ROUTER_CACHE_DIR=off` builds
every time. The cache is only ever a shortcut: a folder that cannot be written, or a file that cannot be
read back whole, means building, never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from expert_router.corpora.document import Document
from expert_router.errors import UserError

FORMAT = 1
"""The cache files' format: part of the fingerprint, so a change of format never reads an old file."""


def cache_dir() -> Path | None:
    """Where corpora are cached, or None when caching is turned off."""
    configured = os.environ.get("EXPERT_ROUTER_CACHE_DIR")
    if configured:
        return None if configured.lower() == "off" else Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "expert-router"


def through_cache(
    name: str, build: Callable[[], Iterable[Document]], inputs: Callable[[], Iterable[Path]]
) -> Iterator[Document]:
    """The documents of corpus `name`: read from the cache when `build`'s `inputs` (data folders or
    files) are unchanged since it was cached, else built and cached."""
    folder = cache_dir()
    if folder is None:
        return iter(build())
    try:
        key = fingerprint(name, inputs())
    except UserError:  # a data package is missing: building says which, and how to install it
        return iter(build())
    path = folder / f"{name}-{key[:20]}.jsonl"
    cached = _read(path)
    if cached is not None:
        return iter(cached)
    documents = list(build())
    _write(path, documents)
    return iter(documents)


def fingerprint(name: str, inputs: Iterable[Path]) -> str:
    """A digest of corpus `name`'s recipe (this package's code) and of every file under `inputs`."""
    digest = hashlib.sha256(f"{FORMAT}\0{name}\0".encode())
    for module in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(module.name.encode() + b"\0" + module.read_bytes())
    for root in inputs:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for file in files:
            stat = file.stat()
            digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def _read(path: Path) -> list[Document] | None:
    """The cached documents, or None when there are none to trust (missing, cut short, not ours)."""
    try:
        lines = path.read_bytes().splitlines()
        header = json.loads(lines[0])
        if header != {"format": FORMAT, "documents": len(lines) - 1}:
            return None
        return [Document(**json.loads(line)) for line in lines[1:]]
    except (OSError, ValueError, TypeError, IndexError):
        return None


def _write(path: Path, documents: list[Document]) -> None:
    """Write the cache file whole or not at all (a temporary file renamed into place: processes that
    build the same corpus at once each write their own), and drop older versions of the same corpus."""
    lines = [json.dumps({"format": FORMAT, "documents": len(documents)})]
    lines += [json.dumps({"text": d.text, "label": d.label, "source": d.source}) for d in documents]
    temporary: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".tmp-", delete=False) as handle:
            temporary = Path(handle.name)
            handle.write("\n".join(lines) + "\n")
        os.replace(temporary, path)
        stem = path.name.rsplit("-", 1)[0]
        for old in path.parent.glob(f"{stem}-*.jsonl"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:  # a read-only home, a full disk: the corpus was built, only not kept
        if temporary is not None:
            temporary.unlink(missing_ok=True)
