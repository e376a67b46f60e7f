"""A results folder: one sub-folder per measured cell (configuration x mix x users x repetition).

Each cell folder holds `cell.json` (its labels), the simulator's `records.jsonl`, `workload.jsonl` and
`summary.json`. Repetitions of a cell are pooled when metrics are computed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from expert_router.errors import UserError
from expert_router.loadgen.records import RequestRecord, read_meta, read_records
from expert_router.loadgen.workload import load_workload

CELL_FILE = "cell.json"


@dataclass(frozen=True, order=True)
class CellKey:
    configuration: str
    mix: str
    users: int


@dataclass
class Cell:
    key: CellKey
    runs: list[list[RequestRecord]]
    """One list of records per repetition: time series (system throughput) must not mix runs."""
    valid: bool
    reasons: list[str]
    folders: list[Path]
    mode: str = "closed"

    @property
    def records(self) -> list[RequestRecord]:
        """Every repetition's records together (per-request metrics pool them)."""
        return [r for run in self.runs for r in run]

    @property
    def repetitions(self) -> int:
        return len(self.runs)


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
        labels = json.loads(marker.read_text())
        grouped[CellKey(labels["configuration"], labels["mix"], int(labels["users"]))].append(folder)
    if not grouped:
        raise UserError(f"{root} holds no finished runs (expected runs/*/*/u*/r*/{CELL_FILE} with a summary.json)")
    cells = {}
    for key, folders in sorted(grouped.items()):
        runs = [read_records(f / "records.jsonl") for f in folders]
        summaries = [json.loads((f / "summary.json").read_text()) for f in folders]
        reasons = [reason for s in summaries for reason in s.get("reasons", [])]
        mode = read_meta(folders[0] / "records.jsonl").get("settings", {}).get("mode", "closed")
        cells[key] = Cell(key, runs, all(s.get("valid", True) for s in summaries), reasons, folders, mode)
    return cells


def prompt_lengths(cells: dict[CellKey, Cell]) -> tuple[dict[str, list[int]], str]:
    """Per mix, the input lengths of the prompts sent, and their unit (`tokens`, or `words` when the
    workload was drawn without a tokenizer)."""
    lengths: dict[str, list[int]] = {}
    units: set[str] = set()
    for cell in cells.values():
        for run in cell.runs:
            lengths.setdefault(cell.key.mix, []).extend(r.prompt_tokens for r in run)
        for folder in cell.folders[:1]:
            path = folder / "workload.jsonl"
            if path.is_file():
                units.update(item.length_unit for item in load_workload(path)[:1])
    return lengths, "words" if "words" in units else "tokens"
