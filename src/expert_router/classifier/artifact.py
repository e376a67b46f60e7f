"""Saving and loading a classifier's arrays and settings as plain `.npy` files and JSON.

A routing artifact is shared between machines and gateway replicas, so loading one must never run
code: no pickle anywhere, `.npy` files read with `allow_pickle=False`, and every file checked against
the SHA-256 recorded in the manifest so that a truncated or edited artifact is refused, not misused.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from expert_router.classifier.settings import ClassifierSettings
from expert_router.errors import UserError

FORMAT = "expert-router/classifier"
OLD_FORMAT = "expert-router/clusterer"
"""Written before the concept had one name; still read, with a warning."""
FORMAT_VERSION = 1
MANIFEST = "classifier.json"
OLD_MANIFEST = "clusterer.json"
VOCABULARY = "vocabulary.json"
ARRAYS = ("idf", "projection", "centroids", "scale_mean", "scale_std")


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    sha256: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str
    format_version: int
    settings: ClassifierSettings
    n_terms: int
    train_sizes: list[int] | None = None
    files: dict[str, FileEntry]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Stored:
    """What a saved classifier holds; `arrays` by name (see ARRAYS), the optional ones may be None."""

    settings: ClassifierSettings
    vocabulary: list[str]
    arrays: dict[str, np.ndarray | None]
    train_sizes: list[int] | None


def save(directory: str | Path, stored: Stored) -> Path:
    """Write the artifact into `directory` (created if needed); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, FileEntry] = {}
    payloads: dict[str, bytes] = {VOCABULARY: json.dumps(stored.vocabulary, ensure_ascii=False).encode()}
    files["vocabulary"] = FileEntry(file=VOCABULARY, sha256=_sha256(payloads[VOCABULARY]))
    for name in ARRAYS:
        array = stored.arrays.get(name)
        if array is None:
            continue
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        payloads[f"{name}.npy"] = buffer.getvalue()
        files[name] = FileEntry(file=f"{name}.npy", sha256=_sha256(payloads[f"{name}.npy"]))
    for file, data in payloads.items():
        (directory / file).write_bytes(data)
    manifest = Manifest(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        settings=stored.settings,
        n_terms=len(stored.vocabulary),
        train_sizes=stored.train_sizes,
        files=files,
    )
    (directory / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    return directory


def load(directory: str | Path) -> Stored:
    """Read an artifact written by `save`, refusing anything missing, altered or of another version."""
    directory = Path(directory)
    manifest_path, manifest = _read_manifest(directory)

    def read(name: str) -> bytes:
        entry = manifest.files.get(name)
        if entry is None:
            raise UserError(f"{manifest_path} is corrupt: it lists no {name!r} file")
        path = directory / Path(entry.file).name
        if not path.is_file():
            raise UserError(f"{directory} is incomplete: {path.name} is missing")
        data = path.read_bytes()
        if _sha256(data) != entry.sha256:
            raise UserError(f"{directory} is corrupt: {path.name} does not match its checksum in {MANIFEST}")
        return data

    vocabulary = json.loads(read("vocabulary"))
    arrays: dict[str, Any] = {}
    for name in ARRAYS:
        if name in manifest.files:
            try:
                arrays[name] = np.load(io.BytesIO(read(name)), allow_pickle=False)
            except ValueError as exc:
                raise UserError(f"{directory} is corrupt: {name}.npy cannot be read ({exc})") from None
    _check_shapes(directory, manifest_path, manifest, vocabulary, arrays)
    return Stored(manifest.settings, vocabulary, arrays, manifest.train_sizes)


def _read_manifest(directory: Path) -> tuple[Path, Manifest]:
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file() and (directory / OLD_MANIFEST).is_file():
        warnings.warn(
            f"{directory} holds an old-style {OLD_MANIFEST}; save it again to write {MANIFEST}",
            DeprecationWarning,
            stacklevel=3,
        )
        manifest_path = directory / OLD_MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"{directory} is not a saved classifier: {MANIFEST} is missing")
    try:
        raw = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{manifest_path} is corrupt: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") not in (FORMAT, OLD_FORMAT):
        raise UserError(f"{manifest_path} is not an expert-router classifier manifest")
    if raw.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{directory} was written in classifier format version {raw.get('format_version')}; "
            f"this expert-router reads version {FORMAT_VERSION}: fit it again with `expert-router classifier fit`"
        )
    try:
        return manifest_path, Manifest.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{manifest_path} is corrupt: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None


def _scaling_fits(scaling: str, dims: int, arrays: dict[str, Any]) -> bool:
    """L2 scaling keeps no arrays; standard scaling both its mean and its deviation, one per dimension
    (without `scale_std`, a standard-scaling classifier loaded and silently routed as an L2 one)."""
    if scaling == "l2":
        return "scale_mean" not in arrays and "scale_std" not in arrays
    return all(name in arrays and arrays[name].shape == (dims,) for name in ("scale_mean", "scale_std"))


def _check_shapes(
    directory: Path, manifest_path: Path, manifest: Manifest, vocabulary: list[str], arrays: dict[str, Any]
) -> None:
    for name in ("idf", "projection", "centroids"):
        if name not in arrays:
            raise UserError(f"{manifest_path} is corrupt: it lists no {name!r} array")
    settings = manifest.settings
    shapes_ok = (
        len(vocabulary) == manifest.n_terms
        and arrays["idf"].shape == (manifest.n_terms,)
        and arrays["projection"].shape == (manifest.n_terms, settings.dims)
        and arrays["centroids"].shape == (settings.k, settings.dims)
        and _scaling_fits(settings.scaling, settings.dims, arrays)
    )
    if not shapes_ok:
        raise UserError(f"{directory} is corrupt: its arrays do not fit together")
