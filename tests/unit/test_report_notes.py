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
