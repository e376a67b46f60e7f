"""Reading text corpora: files, folders, Hugging Face datasets, and the offline demo corpus.

Every reader streams documents one at a time, so a corpus larger than memory can be cut with `limit`
without being read whole. A corpus is named by one string (`CORPUS` on the command line):

- `demo`: the offline demo corpus, eight balanced topics from Debian packages (see `expert_router.corpora`);
- `fortunes`: the older fortunes-only corpus (Debian's `fortunes` package, labelled by category);
- `hf:NAME` (optionally `hf:NAME:CONFIG`): a Hugging Face dataset, streamed, e.g. `hf:allenai/c4:en`;
  NAME may also be a local dataset folder;
- a `.jsonl` / `.jsonl.gz` / `.json` file (one JSON object per line), a `.parquet` file, a `.txt` file
  (one document per blank-line separated paragraph), or a folder of `.txt` files (one document each,
  labelled by the sub-folder they are in).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from expert_router.corpora.document import Document
from expert_router.errors import UserError
from expert_router.progress import counted


@dataclass(frozen=True)
class CorpusOptions:
    text_field: str = "text"
    label_field: str | None = None
    split: str = "train"


def read_corpus(spec: str, options: CorpusOptions | None = None, limit: int | None = None) -> Iterator[Document]:
    """Stream the documents of corpus `spec` (see the module docstring), at most `limit` of them."""
    from expert_router.corpora import NAMED_CORPORA, read_named

    options = options or CorpusOptions()
    if spec in NAMED_CORPORA:
        documents = read_named(spec)
    elif spec.startswith("hf:"):
        documents = read_hf_dataset(spec[3:], options)
    else:
        documents = read_path(Path(spec), options)
    return islice(documents, limit)


def load_corpus(
    spec: str, options: CorpusOptions | None = None, limit: int | None = None, show_progress: bool = False
) -> list[Document]:
    """`read_corpus` into a list without blank documents, refusing an empty corpus."""
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    documents: Iterable[Document] = read_corpus(spec, options, limit)
    if show_progress:
        documents = counted(documents, "reading corpus", total=limit)
    documents = [d for d in documents if d.text.strip()]
    if not documents:
        raise UserError(f"the corpus {spec!r} holds no documents")
    return documents


# -- files and folders ---------------------------------------------------------------------------
def read_path(path: Path, options: CorpusOptions) -> Iterator[Document]:
    if not path.exists():
        raise UserError(f"corpus not found: {path}")
    if path.is_dir():
        return _read_text_folder(path)
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")):
        return _read_jsonl(path, options)
    if name.endswith(".parquet"):
        return _read_parquet(path, options)
    if name.endswith(".txt"):
        return _read_paragraphs(path)
    if _looks_binary(path):
        raise UserError(f"{path} is not a text corpus (binary content); expected .jsonl, .parquet, .txt or a folder")
    raise UserError(f"{path}: unknown corpus format; expected .jsonl, .json, .parquet, .txt or a folder of .txt files")


def _looks_binary(path: Path) -> bool:
    with path.open("rb") as handle:
        return b"\0" in handle.read(8192)


def _read_text(path: Path) -> str:
    if _looks_binary(path):
        raise UserError(f"{path} is not a text file (binary content)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None


def _read_jsonl(path: Path, options: CorpusOptions) -> Iterator[Document]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is not text
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise UserError(f"{path} line {number} is not JSON") from None
                yield _document_from_record(record, options, f"{path} line {number}")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    except (gzip.BadGzipFile, EOFError, zlib.error):
        raise UserError(f"{path} is not a readable gzip file") from None


def _document_from_record(record: object, options: CorpusOptions, where: str) -> Document:
    if not isinstance(record, dict):
        raise UserError(f"{where} is not a JSON object")
    text = record.get(options.text_field)
    if not isinstance(text, str):
        raise UserError(f"{where} has no text field {options.text_field!r} (use --text-field to name it)")
    label = record.get(options.label_field) if options.label_field else None
    return Document(text=text, label=None if label is None else str(label))


def _read_parquet(path: Path, options: CorpusOptions) -> Iterator[Document]:
    import pyarrow.parquet as pq
    from pyarrow import ArrowException

    try:
        parquet = pq.ParquetFile(path)
    except (ArrowException, OSError) as exc:
        raise UserError(f"{path} is not a readable Parquet file ({exc})") from None
    columns = [options.text_field] + ([options.label_field] if options.label_field else [])
    missing = [c for c in columns if c not in parquet.schema_arrow.names]
    if missing:
        raise UserError(f"{path} has no column {missing[0]!r}; its columns: {', '.join(parquet.schema_arrow.names)}")
    for batch in parquet.iter_batches(columns=columns, batch_size=4096):
        texts = batch.column(options.text_field).to_pylist()
        labels = batch.column(options.label_field).to_pylist() if options.label_field else [None] * len(texts)
        for text, label in zip(texts, labels):
            if isinstance(text, str):
                yield Document(text=text, label=None if label is None else str(label))


def _read_paragraphs(path: Path, label: str | None = None) -> Iterator[Document]:
    for paragraph in _read_text(path).split("\n\n"):
        if paragraph.strip():
            yield Document(text=paragraph.strip(), label=label)


def _read_text_folder(root: Path) -> Iterator[Document]:
    files = sorted(p for p in root.rglob("*.txt") if p.is_file())
    if not files:
        raise UserError(f"{root} holds no .txt files")
    for path in files:
        text = _read_text(path).strip()
        if text:
            parent = path.parent.relative_to(root)
            yield Document(text=text, label=None if parent == Path(".") else parent.as_posix())


# -- Hugging Face datasets -----------------------------------------------------------------------
def read_hf_dataset(name: str, options: CorpusOptions) -> Iterator[Document]:
    """Stream a Hugging Face dataset (`NAME` or `NAME:CONFIG`), e.g. `allenai/c4:en`, the paper's corpus."""
    try:
        import datasets
    except ImportError:
        raise UserError("reading Hugging Face datasets needs the 'hf' extra: pip install 'expert-router[hf]'") from None
    config = None
    if ":" in name:
        name, config = name.split(":", 1)
    try:
        dataset = datasets.load_dataset(name, config, split=options.split, streaming=True)
    except Exception as exc:  # datasets raises many kinds: not found, offline, bad config
        raise UserError(f"cannot open Hugging Face dataset {name!r}: {exc}") from None
    where = f"dataset {name!r}"
    return (_document_from_record(row, options, where) for row in dataset)
