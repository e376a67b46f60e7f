"""A results folder: one sub-folder per measured cell (configuration x mix x users x repetition).

Each cell folder holds `cell.json` (its labels), the simulator's `records.jsonl`, `workload.jsonl` and
`summary.json` (and, from `expert-router simulate`, `digest.npz`). Repetitions of a cell are pooled when
metrics are computed. Each run is read as its digest (`analysis/digest.py`): a few numbers per request
and its throughput windows, so a sweep of hundreds of millions of token times fits in memory.
"""

from __future__ import annotations

import json
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from expert_router.analysis import digest
from expert_router.analysis.digest import RunDigest
from expert_router.errors import UserError
from expert_router.loadgen.records import RequestRecord, read_meta, read_records
from expert_router.loadgen.workload import load_workload

CELL_FILE = "cell.json"
DIGEST_FILE = "digest.npz"
RESUME_FILE = "settings.json"
"""What a results folder's cells were made with, every configuration a run or a resume added
(`experiment.check_resume`): a resume with other settings is refused."""


@dataclass(frozen=True, order=True)
class CellKey:
    configuration: str
    mix: str
    users: int


@dataclass
class Cell:
    key: CellKey
    runs: list[RunDigest]
    """One digest per repetition: time series (system throughput) must not mix runs."""
    valid: bool
    reasons: list[str]
    folders: list[Path]
    mode: str = "closed"

    @classmethod
    def of_records(
        cls, key: CellKey, runs: list[list[RequestRecord]], valid: bool = True, mode: str = "closed"
    ) -> Cell:
        """A cell from records in memory (tests, one-off analyses)."""
        return cls(key, [digest.digest(run, mode) for run in runs], valid, [], [], mode)

    def values(self, name: str) -> np.ndarray:
        """A per-request metric (`RunDigest.PER_REQUEST`) over every repetition, in record order."""
        return np.concatenate([run.values(name) for run in self.runs]) if self.runs else np.array([])

    @property
    def requests(self) -> int:
        return sum(run.requests for run in self.runs)

    @property
    def failed(self) -> int:
        return sum(run.requests - run.ok for run in self.runs)

    @property
    def repetitions(self) -> int:
        return len(self.runs)


def read_json(path: Path) -> Any:
    """A results file's JSON; a damaged one (cut short by a crash, edited by hand) is named, not a traceback."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path} is damaged ({exc})") from None


def cell_folder(root: Path, configuration: str, mix: str, users: int, repetition: int) -> Path:
    return root / "runs" / configuration / mix / f"u{users}" / f"r{repetition}"


def load_cells(root: Path) -> dict[CellKey, Cell]:
    """Every finished cell under `root`, repetitions pooled."""
    if not root.is_dir():
        raise UserError(f"results folder not found: {root}")
    grouped: dict[CellKey, list[Path]] = defaultdict(list)
    for marker in sorted(root.glob(f"runs/**/{CELL_FILE}")):
        folder = marker.parent
        if not (folder / "summary.json").is_file():
            continue  # unfinished: the runner redoes it
        labels = read_json(marker)
        try:
            key = CellKey(str(labels["configuration"]), str(labels["mix"]), int(labels["users"]))
        except (TypeError, KeyError, ValueError) as exc:
            raise UserError(f"{marker} is damaged (no {exc} among its labels): delete its cell folder") from None
        grouped[key].append(folder)
    if not grouped:
        raise UserError(f"{root} holds no finished runs (expected runs/*/*/u*/r*/{CELL_FILE} with a summary.json)")
    cells = {}
    for key, folders in sorted(grouped.items()):
        summaries = [read_json(f / "summary.json") for f in folders]
        reasons = [reason for s in summaries for reason in s.get("reasons", [])]
        mode = run_mode(folders[0], summaries[0])
        runs = [read_digest(f, mode) for f in folders]
        cells[key] = Cell(key, runs, all(s.get("valid", True) for s in summaries), reasons, folders, mode)
    return cells


def run_mode(folder: Path, summary: dict[str, Any]) -> str:
    """Closed or open loop: from the summary's meta, else (older runs) from the records' meta line."""
    meta = summary.get("meta")
    if not isinstance(meta, dict) or "settings" not in meta:
        meta = read_meta(folder / "records.jsonl")
    return str(meta.get("settings", {}).get("mode", "closed"))


def read_digest(folder: Path, mode: str) -> RunDigest:
    """A run's digest: the one `expert-router simulate` wrote, else made from its records (one run's
    records in memory at a time)."""
    path, records = folder / DIGEST_FILE, folder / "records.jsonl"
    try:
        saved = digest.load(path) if path.is_file() else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # numpy's words for a damaged file
        if not records.is_file():
            raise UserError(f"{path} is damaged ({exc}) and its cell has no records: run the cell again") from None
        saved = None  # a digest is made from the records: make it again
    return saved if saved is not None else digest.digest(read_records(records), mode)


def prompt_lengths(cells: dict[CellKey, Cell]) -> tuple[dict[str, list[int]], str]:
    """Per mix, the input lengths of the prompts sent, and their unit (`tokens`, or `words` when the
    workload was drawn without a tokenizer)."""
    lengths: dict[str, list[int]] = {}
    units: set[str] = set()
    for cell in cells.values():
        for run in cell.runs:
            lengths.setdefault(cell.key.mix, []).extend(int(n) for n in run.prompt_tokens)
        for folder in cell.folders[:1]:
            path = folder / "workload.jsonl"
            if path.is_file():
                units.update(item.length_unit for item in load_workload(path)[:1])
    return lengths, "words" if "words" in units else "tokens"
