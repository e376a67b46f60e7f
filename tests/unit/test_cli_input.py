"""Bad input to the CLI gets a clear message and a non-zero exit, never a traceback or a run without end."""

from __future__ import annotations

import json
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


def fit_classifier(tmp_path: Path, out: Path, capsys) -> None:
    """A small saved classifier (k=2) at `out`; what the fit printed is dropped."""
    assert main(["classifier", "fit", str(corpus(tmp_path)), "--out", str(out), "--k", "2", "--dims", "3"]) == 0
    capsys.readouterr()


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


VALID = b'{"request_id": 1, "workload_id": 1, "user_id": 0, "cluster_drawn": 0, "prompt_tokens": 1, "max_tokens": 2'


@pytest.mark.parametrize(
    "line",
    [
        b"{",
        b"[1]",
        b'{"request_id": "x"}',
        b"5",
        # Null where a value must be: a TypeError deep in the metrics, long after the file was read.
        VALID + b', "chunk_tokens": null}',
        VALID + b', "server_timing": null}',
        VALID + b', "output_tokens": null}',
    ],
)
def test_a_records_file_that_is_not_records_is_a_clear_error(line: bytes, tmp_path: Path):
    """`simulate --gateway-from`, `report` and the rest read records: a bad line was a traceback."""
    path = tmp_path / "records.jsonl"
    path.write_bytes(b'{"meta": {}}\n' + line + b"\n")
    with pytest.raises(UserError, match="line 2"):
        read_records(path)


def test_an_empty_prompt_to_route_is_refused_as_a_blank_line_is(tmp_path: Path, capsys):
    fit_classifier(tmp_path, tmp_path / "c", capsys)
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


def test_experts_build_says_a_bad_out_folder_before_it_trains(tmp_path: Path, capsys, monkeypatch):
    """The folder was made only once training was over: minutes of work, then a traceback."""
    from expert_router.engine import build

    trained: list[object] = []
    monkeypatch.setattr(build, "build_experts", lambda *args, **kwargs: trained.append(args))
    fit_classifier(tmp_path, tmp_path / "c", capsys)
    taken = tmp_path / "a-file"
    taken.write_text("x")
    code = main(["experts", "build", str(corpus(tmp_path)), "--classifier", str(tmp_path / "c"), "--out", str(taken)])
    assert code == 2 and "a-file" in capsys.readouterr().err
    assert not trained


@pytest.mark.parametrize("problem", ["missing corpus", "--heads 3"])
def test_a_refused_experts_build_leaves_the_last_build_whole(problem: str, tmp_path: Path, capsys):
    """The last build's base model, adapters and deployment files were deleted first, and the input
    checked after: a typo in the corpus path, or a head count vLLM cannot run, cost the whole build."""
    fit_classifier(tmp_path, tmp_path / "c", capsys)
    out = tmp_path / "build"
    (out / "base").mkdir(parents=True)
    (out / "base" / "config.json").write_text("{}")
    (out / "deployment.yaml").write_text("experts: []")
    missing = problem == "missing corpus"
    source, flags = (tmp_path / "missing.jsonl", []) if missing else (corpus(tmp_path), ["--heads", "3"])
    code = main(["experts", "build", str(source), "--classifier", str(tmp_path / "c"), "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2 and ("not found" in err if missing else "heads" in err), err
    assert (out / "base" / "config.json").is_file() and (out / "deployment.yaml").is_file()


def test_a_demo_folder_made_with_another_k_is_not_reused_silently(tmp_path: Path, capsys):
    """A second demo with another --k reused the first one's classifier (and its experts) without a word."""
    out = tmp_path / "demo-out"
    fit_classifier(tmp_path, out / "classifier", capsys)
    assert main(["demo", "--out", str(out), "--k", "3", "--classifier-only"]) == 2
    assert "--k 2" in capsys.readouterr().err


def test_an_experiment_is_checked_before_its_services_start(tmp_path: Path, capsys):
    """A configuration URL that is not one, or a classifier that is not there, was found out only once
    every service of the first configuration had started (and the first cell had failed)."""
    started = tmp_path / "started"
    service = {"name": "s", "command": ["touch", str(started)]}
    configuration = {"name": "A", "url": "127.0.0.1:8000", "services": [service]}
    path = tmp_path / "experiment.yaml"
    path.write_text(json.dumps({"classifier": "classifier", "configurations": [configuration], "users": [1]}))
    assert main(["experiment", "run", str(path), "--results", str(tmp_path / "results")]) == 2
    assert "http://" in capsys.readouterr().err
    configuration["url"] = "http://127.0.0.1:8000"
    path.write_text(json.dumps({"classifier": "classifier", "configurations": [configuration], "users": [1]}))
    assert main(["experiment", "run", str(path), "--results", str(tmp_path / "results")]) == 2
    assert "not a saved classifier" in " ".join(capsys.readouterr().err.split())  # the console wraps lines
    # A length setting or corpus that cannot be drawn from: said once the services had started.
    fit_classifier(tmp_path, tmp_path / "classifier", capsys)
    for problem, said in (({"input_lengths": "nope"}, "nope"), ({"corpus": str(tmp_path / "none.jsonl")}, "none")):
        document = {"classifier": "classifier", "configurations": [configuration], "users": [1], **problem}
        path.write_text(json.dumps(document))
        assert main(["experiment", "run", str(path), "--results", str(tmp_path / "results")]) == 2
        assert said in capsys.readouterr().err
    assert not started.exists()


def test_experts_build_reads_a_corpus_as_classifier_fit_does(tmp_path: Path, capsys, monkeypatch):
    """It took no --text-field or --label-field: a corpus with its text in another field could not be
    built, and a labelled one lost its labels (evaluate's routing accuracy was always null)."""
    from expert_router.engine import build

    losses = {"base": 1.0, "expert-0": 1.0, "expert-1": 1.0}
    monkeypatch.setattr(build, "build_experts", lambda *args, **kwargs: {"final_loss": losses})
    words = ["flour", "sugar", "oven", "bake", "kernel", "python", "compiler", "thread"]
    lines = [
        json.dumps(
            {"body": f"note{i} " + " ".join(words[(i + j) % 4 + 4 * (i % 2)] for j in range(8)), "topic": "ab"[i % 2]}
        )
        for i in range(200)
    ]
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("\n".join(lines) + "\n")
    options = ["--text-field", "body", "--label-field", "topic"]
    assert (
        main(["classifier", "fit", str(labelled), "--out", str(tmp_path / "c"), "--k", "2", "--dims", "3", *options])
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "experts"
    assert (
        main(["experts", "build", str(labelled), "--classifier", str(tmp_path / "c"), "--out", str(out), *options]) == 0
    )
    assert set(json.loads((out / "held-out.json").read_text())["cluster_labels"].values()) == {"a", "b"}


def test_the_demo_runs_the_papers_eight_expert_study_only_on_eight_clusters(tmp_path):
    """With --k 12 a prompt of cluster 8 had no expert and the demo failed after its own study; with
    --k 4 four of the paper's experts idled under its name."""
    import argparse

    from expert_router.commands.demo import paper_in_virtual_time

    for k in (4, 12):
        assert paper_in_virtual_time(tmp_path, argparse.Namespace(no_paper=False), k) is None
    assert not (tmp_path / "paper").exists()


NOT_UTF8 = b"\xff\xfe\x00bad\n"


@pytest.mark.parametrize("command", [["experiment", "run"], ["simulate"]])
def test_an_experiment_file_that_is_not_text_is_a_clear_error(command: list[str], tmp_path: Path, capsys):
    """A UnicodeDecodeError traceback."""
    path = tmp_path / "experiment.yaml"
    path.write_bytes(NOT_UTF8)
    assert main([*command, str(path), "--results", str(tmp_path / "results")]) == 2
    assert "experiment.yaml" in capsys.readouterr().err


def test_length_settings_that_cannot_be_run_are_refused(tmp_path: Path):
    """A lengths file that is not text was a traceback; a mean of 1e9 words hung the run building its
    prompts; `fixed:nan` output lengths started an emulator whose every answer was a 500."""
    from expert_router.emulate.outputs import parse_output_lengths
    from expert_router.loadgen.lengths import parse_lengths

    not_text = tmp_path / "lengths.txt"
    not_text.write_bytes(NOT_UTF8)
    with pytest.raises(UserError, match="not a text file"):
        parse_lengths(f"file:{not_text}")
    with pytest.raises(UserError, match="not a text file"):
        parse_output_lengths(f"file:{not_text}")
    for mean, std in ((1e9, 30.0), (335.0, 1e9), (float("nan"), 30.0)):
        with pytest.raises(UserError, match="--input-mean"):
            parse_lengths("fixed", mean, std)
    for spec in ("fixed:nan", "normal:5,nan", "exponential:inf", "lognormal:nan,1"):
        with pytest.raises(UserError, match="finite positive"):
            parse_output_lengths(spec)


@pytest.mark.parametrize("template", [b"a: [unclosed", NOT_UTF8, b"", b"- a list"])
def test_an_envoy_template_that_is_not_one_is_a_clear_error(template: bytes, tmp_path: Path, capsys):
    """YAML's ParserError and a UnicodeDecodeError were tracebacks; an empty file, a TypeError in the message."""
    fit_classifier(tmp_path, tmp_path / "c", capsys)
    deployment = tmp_path / "deploy.yaml"
    deployment.write_text(
        "classifier: c\nexperts:\n"
        + "".join(f"  - {{cluster: {c}, model: e{c}, endpoints: [http://127.0.0.1:{8100 + c}]}}\n" for c in range(2))
    )
    (tmp_path / "envoy.yaml").write_bytes(template)
    assert main(["extproc", str(deployment), "--envoy-config", str(tmp_path / "envoy.yaml")]) == 2
    err = capsys.readouterr().err
    assert "--envoy-config" in err and "Traceback" not in err and "TypeError" not in err


@pytest.mark.parametrize(
    "argv",
    [
        # The demo's own experiment file refused these, after minutes of fitting and building.
        ["demo", "--users", "0"],
        ["demo", "--duration", "0"],
        ["demo", "--max-tokens", "0"],
        # Each ran: 42 closed every connection unanswered, 200 sent the "error" as a success.
        ["synthetic-expert", "--fail-status", "42"],
        ["synthetic-expert", "--fail-status", "200"],
        ["synthetic-expert", "--die-after-tokens", "-1"],
        ["synthetic-expert", "--end-after-tokens", "-1"],
        ["synthetic-expert", "--reported-waiting", "-1"],
        # Written into nginx.conf as given: `listen 127.0.0.1:0;` and `listen bad host;:8080;`.
        ["nginx-router", "d.yaml", "--out", "o", "--port", "0"],
        ["nginx-router", "d.yaml", "--out", "o", "--host", "bad host;"],
    ],
)
def test_flags_that_cannot_work_are_refused_by_the_parser(argv: list[str], capsys):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2 and argv[-2] in capsys.readouterr().err
