"""The answer-quality evaluation, on a tiny model where the answer is known.

Two topics with disjoint vocabularies (cooking, computing); a tiny base model that saw both for a few
steps; one LoRA adapter trained on each topic. Each expert must beat the other, and the base model,
on its own topic's held-out text, and the classifier must route held-out documents to their topic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_corpus
from expert_router.classifier import Classifier, ClassifierSettings
from expert_router.errors import UserError
from expert_router.quality import answer_quality_section, evaluate_experts, is_held_out, read_held_out, write_held_out
from expert_router.quality.heldout import majority_labels, split_documents


def test_held_out_split_is_a_stable_share_of_the_corpus():
    texts = [f"document number {i}" for i in range(2000)]
    chosen = [t for t in texts if is_held_out(t, 0.2)]
    assert 0.17 < len(chosen) / len(texts) < 0.23
    assert chosen == [t for t in texts if is_held_out(t, 0.2)]
    assert not any(is_held_out(t, 0.0) for t in texts)


def test_split_keeps_clusters_labels_and_majority_topics(tmp_path):
    texts = [f"text {i}" for i in range(200)]
    clusters = [i % 2 for i in range(200)]
    labels = ["even" if i % 2 == 0 else "odd" for i in range(200)]
    training, held_out = split_documents(texts, labels, clusters, 2, 0.25)
    assert sum(map(len, training.values())) + len(held_out.texts) == 200
    assert not set(held_out.texts) & set(training[0] + training[1])
    assert held_out.cluster_labels == {0: "even", 1: "odd"}
    write_held_out(tmp_path, held_out, 0.25)
    assert read_held_out(tmp_path) == held_out
    assert majority_labels([0, 0, 1], ["a", None, None]) == {0: "a"}


def test_experts_without_a_held_out_file_are_a_user_error(tmp_path):
    (tmp_path / "deployment.yaml").write_text("# an older build's\n")
    with pytest.raises(UserError, match="build them again"):
        read_held_out(tmp_path)
    # Not every folder without one is an older build: a typo, or another folder, is said as such.
    with pytest.raises(UserError, match="is not a folder"):
        read_held_out(tmp_path / "typo")
    with pytest.raises(UserError, match="not a folder written by"):
        read_held_out(tmp_path.parent)


@pytest.fixture(scope="module")
def tiny_experts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("peft")
    import torch

    from expert_router.engine.build import BuildSettings, build_experts

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tiny-experts")
    corpus = [(t, label) for t, label in make_corpus(n_per_topic=80) if label in ("cooking", "computing")]
    texts, labels = [t for t, _ in corpus], [label for _, label in corpus]
    classifier = Classifier.fit(texts, ClassifierSettings(k=2, dims=8))
    classifier.save(out / "classifier")
    training, held_out = split_documents(texts, labels, classifier.route(texts).cluster.tolist(), 2, 0.2)
    settings = BuildSettings(
        vocab_size=300, hidden_size=64, layers=1, heads=1, seq_len=32, base_steps=30, adapter_steps=60, batch_size=8
    )
    build_experts(training, out, settings, lambda *_: None)
    write_held_out(out, held_out, 0.2)
    torch.set_num_threads(threads)
    return out


def test_each_expert_beats_the_other_and_the_base_model_on_its_topic(tiny_experts):
    evaluation = evaluate_experts(tiny_experts)
    assert evaluation.matrix.shape == (2, 2) and all(n > 0 for n in evaluation.documents)
    assert evaluation.diagonal_lowest == 2
    assert evaluation.routed_vs_base < 0.95
    assert evaluation.routed_vs_random < 0.95
    assert evaluation.routing_accuracy == 1.0
    assert set(evaluation.cluster_labels.values()) == {"cooking", "computing"}


def test_the_report_section_has_a_heat_map_and_a_row_per_cluster(tiny_experts, tmp_path):
    section = answer_quality_section(evaluate_experts(tiny_experts, max_documents=5), tmp_path)
    assert section.figures[0].read_bytes()[:4] == b"\x89PNG"
    assert [row["cluster"] for row in section.rows] == [0, 1]
    assert all(row["routed"] < row["random_other"] for row in section.rows)
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert saved["diagonal_lowest_rows"] == 2 and len(saved["perplexity"]) == 2


def test_evaluate_command_prints_one_json_summary(tiny_experts, tmp_path, capsys):
    from expert_router.cli import main

    assert main(["evaluate", str(tiny_experts), "--out", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["diagonal_lowest_rows"] == 2 and summary["routing_accuracy"] == 1.0
    assert (tmp_path / "quality_perplexity.png").is_file()
    assert main(["evaluate", str(tmp_path)]) == 2  # no experts there: a user error, no traceback


def test_a_quality_folder_asked_for_must_hold_an_evaluation(tmp_path):
    """`report --quality` with a mistyped folder made a report without the section and without a word;
    a damaged quality.json was a traceback."""
    from expert_router.analysis.report import quality_section
    from expert_router.errors import UserError

    with pytest.raises(UserError, match="no quality.json"):
        quality_section(tmp_path / "typo", tmp_path)
    (tmp_path / "quality.json").write_text('{"perplexity": []}')
    with pytest.raises(UserError, match="not a file written by"):
        quality_section(tmp_path, tmp_path)


def test_experts_without_held_out_text_are_a_clear_error_and_nan_is_never_written(tiny_experts, tmp_path):
    """Built with --held-out 0, `evaluate` printed NaN figures and exit 0, and quality.json held NaN,
    which is not JSON."""
    import shutil

    from expert_router.quality import HeldOut
    from expert_router.quality.evaluate import Evaluation

    copy = Path(shutil.copytree(tiny_experts, tmp_path / "experts"))
    write_held_out(copy, HeldOut(texts=[], clusters=[], labels=[], cluster_labels={}), 0.0)
    with pytest.raises(UserError, match="no held-out documents"):
        evaluate_experts(copy)
    nan = float("nan")
    one_row = Evaluation(np.array([[2.0, 3.0], [nan, nan]]), np.array([4.0, nan]), [5, 0], {}, None)
    json.loads(json.dumps(one_row.to_json(), allow_nan=False))  # raises on NaN
