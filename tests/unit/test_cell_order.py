"""The order an experiment's cells run in: a router and its direct path take turns."""

from __future__ import annotations

from pathlib import Path

from expert_router.experiment import cell_order
from expert_router.experiment_file import Configuration, Experiment


def experiment(*configurations: Configuration) -> Experiment:
    return Experiment(classifier=Path("c"), configurations=list(configurations), users=[1, 8], mixes=["uniform"])


def names(order) -> list[str]:
    return [f"{c.name}/u{u}" for c, _, u, _ in order]


def every_cell(e: Experiment) -> list:
    return [(c, m, u, r) for c in e.configurations for m in e.mixes for u in e.users for r in range(e.repetitions)]


def test_a_direct_path_takes_turns_with_its_router_and_the_first_rotates():
    router = Configuration(name="router", url="http://r")
    direct = Configuration(name="direct", url="http://d", direct_of="router")
    baseline = Configuration(name="baseline", url="http://b")
    e = experiment(router, direct, baseline)
    assert names(cell_order(e, every_cell(e))) == [
        "router/u1",
        "direct/u1",
        "direct/u8",
        "router/u8",
        "baseline/u1",
        "baseline/u8",
    ]


def test_only_cells_still_to_do_are_ordered():
    router = Configuration(name="router", url="http://r")
    direct = Configuration(name="direct", url="http://d", direct_of="router")
    e = experiment(direct, router)  # the file may list the direct path first
    todo = [cell for cell in every_cell(e) if not (cell[0] is router and cell[2] == 1)]
    assert names(cell_order(e, todo)) == ["direct/u1", "router/u8", "direct/u8"]
