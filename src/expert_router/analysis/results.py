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
from expert_router.loadgen.records import read_records

CELL_FILE = "cell.json"


@dataclass(frozen=True, order=True)
class CellKey:
    configuration: str
    mix: str
    users: int


@dataclass
class Cell:
    key: CellKey
    records: list[dict]
    repetitions: int
    valid: bool
    folders: list[Path]

    def repetition(self, index: int) -> list[dict]:
        """The records of one repetition: time series (system throughput) must not mix runs."""
        return [r for r in self.records if r["_repetition"] == index]


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
        records = [r | {"_repetition": i} for i, f in enumerate(folders) for r in read_records(f / "records.jsonl")]
        valid = all(json.loads((f / "summary.json").read_text()).get("valid", True) for f in folders)
        cells[key] = Cell(key, records, len(folders), valid, folders)
    return cells


def prompt_lengths(cells: dict[CellKey, Cell]) -> dict[str, list[int]]:
    """Per mix, the input lengths of the workload drawn for it (the first one found: one seed, one draw)."""
    lengths: dict[str, list[int]] = {}
    for cell in cells.values():
        for folder in cell.folders:
            path = folder / "workload.jsonl"
            if cell.key.mix not in lengths and path.is_file():
                lengths[cell.key.mix] = [json.loads(line)["input_tokens"] for line in path.read_text().splitlines() if line]
    return lengths
