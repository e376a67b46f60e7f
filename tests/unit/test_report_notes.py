"""The report's note on cells that were not measured well: one line per kind of problem, not per cell."""

from expert_router.analysis.report import _invalid_note


def test_reasons_that_differ_only_in_numbers_are_one_line():
    rows = [
        {"reasons": ["event-loop lag p99 22.4 ms > 5 ms: too busy", "3 stalled streams"]},
        {"reasons": ["event-loop lag p99 25.9 ms > 5 ms: too busy"]},
        {"reasons": ["event-loop lag p99 30.1 ms > 5 ms: too busy"]},
    ]
    note = _invalid_note(rows)
    assert note.startswith("3 cell(s) were not measured well")
    assert note.count("event-loop lag") == 1 and "(and 2 more like it)" in note
    assert "3 stalled streams" in note


def test_no_note_when_every_cell_is_valid():
    assert _invalid_note([]) == ""


def test_a_direct_path_added_on_resume_gets_its_overhead_rows(tmp_path):
    """The pairs were read from the manifest, which holds the first run's configurations only: a direct
    path added on resume was measured and its overhead never shown."""
    import json
    from pathlib import Path

    from expert_router.analysis.report import _direct_pairs
    from expert_router.experiment_file import Configuration, Experiment, check_resume

    router = Configuration(name="router", url="http://r")
    direct = Configuration(name="direct", url="http://d", direct_of="router")
    first = Experiment(classifier=Path("c"), configurations=[router], users=[1])
    check_resume(tmp_path, first)
    (tmp_path / "manifest.json").write_text(json.dumps({"experiment": first.model_dump(mode="json")}))
    check_resume(tmp_path, Experiment(classifier=Path("c"), configurations=[router, direct], users=[1]))
    assert _direct_pairs(tmp_path) == {"direct": "router"}


def test_overhead_differences_that_change_sign_are_called_noise():
    """The demo's table read -75 to +63 ms "routing overhead" beside a gateway that took 0.3 ms, with
    nothing to say that the differences were the runs' spread."""
    from expert_router.analysis.overhead import overhead_note

    def row(diff: float, own: float | None = 0.3) -> dict[str, object]:
        return {"ttft_diff_p50_ms": diff, "gateway_mean_ms": own}

    note = overhead_note([row(-74.5), row(29.9), row(62.6, 0.39)])
    assert "In 1 of 3 cell(s)" in note and "-74.5 to +62.6 ms" in note and "at most 0.39 ms" in note
    assert overhead_note([row(0.4), row(1.2)]) == ""  # the gateway's path slower everywhere: nothing to say
    assert overhead_note([]) == ""
    assert "Server-Timing" not in overhead_note([row(-3.0, None)])  # a gateway that sent no Server-Timing
