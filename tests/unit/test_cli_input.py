"""Bad input to the CLI gets a clear message and a non-zero exit, never a traceback or a run without end."""

from __future__ import annotations

from pathlib import Path

import pytest

from expert_router.cli import main
from expert_router.errors import UserError
from expert_router.loadgen.records import read_records


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "abc"])
def test_numbers_that_are_not_finite_are_refused_by_the_parser(value: str, tmp_path: Path, capsys):
    """A nan duration ran and called it a measurement; a nan rate made a run that never ended."""
    with pytest.raises(SystemExit) as caught:
        main(["load", "http://127.0.0.1:9", "--duration", value, "--users", "1", "--out", str(tmp_path / "out")])
    assert caught.value.code == 2 and "--duration" in capsys.readouterr().err


def test_a_target_url_with_an_impossible_port_is_a_clear_error(capsys):
    assert main(["load", "http://127.0.0.1:70000", "--duration", "1", "--out", "unused"]) == 2
    assert "not a valid URL" in capsys.readouterr().err


def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    words = ["flour", "sugar", "oven", "bake", "kernel", "python", "compiler", "thread", "goal", "match", "score"]
    texts = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(8)) for i in range(60)]
    path.write_text("".join(f'{{"text": "{text}"}}\n' for text in texts))
    return path


def test_an_output_folder_that_cannot_be_made_is_a_clear_error(tmp_path: Path, capsys):
    """A file where the output folder should go gave a FileExistsError traceback."""
    taken = tmp_path / "a-file"
    taken.write_text("x")
    code = main(["classifier", "fit", str(corpus(tmp_path)), "--out", str(taken / "inside"), "--k", "2", "--dims", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "error" in err and "a-file" in err


@pytest.mark.parametrize(
    "flags",
    [["--block-size", "0"], ["--port", "70000"], ["--port", "-1"], ["--seed", "-1"], ["--tp", "0"]],
)
def test_engine_settings_out_of_range_are_refused_by_the_parser(flags: list[str], capsys):
    """Each was a traceback (ZeroDivisionError, OverflowError, numpy's ValueError) or worse."""
    with pytest.raises(SystemExit) as caught:
        main(["emulate", "--preset", "paper-e", *flags])
    assert caught.value.code == 2 and flags[0] in capsys.readouterr().err


def test_instances_that_would_run_past_the_last_port_are_refused(capsys):
    assert main(["emulate", "--preset", "paper-e", "--port", "65535", "--instances", "3"]) == 2
    assert "65535" in capsys.readouterr().err


@pytest.mark.parametrize("line", [b"{", b"[1]", b'{"request_id": "x"}', b"5"])
def test_a_records_file_that_is_not_records_is_a_clear_error(line: bytes, tmp_path: Path):
    """`simulate --gateway-from`, `report` and the rest read records: a bad line was a traceback."""
    path = tmp_path / "records.jsonl"
    path.write_bytes(b'{"meta": {}}\n' + line + b"\n")
    with pytest.raises(UserError, match="line 2"):
        read_records(path)


def test_an_empty_prompt_to_route_is_refused_as_a_blank_line_is(tmp_path: Path, capsys):
    assert (
        main(["classifier", "fit", str(corpus(tmp_path)), "--out", str(tmp_path / "c"), "--k", "2", "--dims", "3"]) == 0
    )
    capsys.readouterr()
    assert main(["classifier", "route", str(tmp_path / "c"), "flour sugar", "  "]) == 2
    assert "empty" in capsys.readouterr().err


def test_a_simulated_duration_of_zero_or_less_is_refused_not_replaced(capsys):
    """0 was silently replaced by the experiment file's duration, and -1 simulated nothing and exited 0."""
    for duration in ("0", "-1"):
        assert main(["simulate", "missing.yaml", "--results", "unused", "--duration", duration]) == 2
        assert "--duration" in capsys.readouterr().err


def test_a_demo_with_no_clusters_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["demo", "--k", "0"])
    assert caught.value.code == 2 and "--k" in capsys.readouterr().err
