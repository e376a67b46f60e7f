import numpy as np
import pytest
from scipy.stats import chisquare

from expert_router.errors import UserError
from expert_router.loadgen.lengths import MLPERF_MAX, parse_lengths
from expert_router.loadgen.workload import (
    build_workload,
    load_workload,
    mix_probabilities,
    save_workload,
)

TEXTS = {c: [f"cluster{c} word{i} " * 5 for i in range(20)] for c in range(8)}


def test_uniform_mix_hits_equal_shares():
    items = build_workload(TEXTS, 4000, mix_probabilities(8, "uniform"), parse_lengths("fixed", 50, 5), 100, seed=1)
    counts = np.bincount([i.cluster for i in items], minlength=8)
    assert chisquare(counts).pvalue > 0.001


def test_normal_mix_follows_the_normal_density():
    p = mix_probabilities(8, "normal", mean=3.5, std=1.5)
    assert p.argmax() in (3, 4) and p[0] < p[2] < p[3] and abs(p.sum() - 1) < 1e-12
    items = build_workload(TEXTS, 4000, p, parse_lengths("fixed", 50, 5), 100, seed=2)
    counts = np.bincount([i.cluster for i in items], minlength=8)
    assert chisquare(counts, 4000 * p).pvalue > 0.001
    assert chisquare(counts).pvalue < 1e-6  # and clearly not uniform


def test_prompts_come_from_their_cluster_and_have_the_drawn_length():
    items = build_workload(TEXTS, 50, mix_probabilities(8, "uniform"), parse_lengths("fixed", 40, 0), 7, seed=0)
    for item in items:
        assert item.input_tokens == 40 and len(item.prompt.split()) == 40
        assert all(word.startswith((f"cluster{item.cluster}", "word")) for word in item.prompt.split())
        assert item.max_tokens == 7


def test_the_seed_fixes_the_workload():
    args = (TEXTS, 30, mix_probabilities(8, "normal"), parse_lengths("mlperf"), 100)
    assert build_workload(*args, seed=5) == build_workload(*args, seed=5)
    assert build_workload(*args, seed=5) != build_workload(*args, seed=6)


def test_mlperf_shape_is_skewed_and_capped():
    lengths = parse_lengths("mlperf").sample(np.random.default_rng(0), 20000)
    assert lengths.max() <= MLPERF_MAX and lengths.min() >= 16
    assert np.mean(lengths) > np.median(lengths)  # right-skewed


def test_lengths_from_a_file(tmp_path):
    (tmp_path / "l.txt").write_text("10\n20\n30\n")
    sampled = parse_lengths(f"file:{tmp_path / 'l.txt'}").sample(np.random.default_rng(0), 100)
    assert set(sampled) <= {10, 20, 30}
    (tmp_path / "bad.txt").write_text("ten\n")
    with pytest.raises(UserError):
        parse_lengths(f"file:{tmp_path / 'bad.txt'}")
    with pytest.raises(UserError):
        parse_lengths("gamma")


def test_save_and_replay_exactly(tmp_path):
    items = build_workload(TEXTS, 25, mix_probabilities(8, "uniform"), parse_lengths("mlperf"), 100, seed=3)
    save_workload(items, tmp_path / "w.jsonl")
    assert load_workload(tmp_path / "w.jsonl") == items
    (tmp_path / "broken.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(UserError, match="broken.jsonl:1"):
        load_workload(tmp_path / "broken.jsonl")


def test_empty_clusters_are_skipped_and_bad_mixes_refused():
    only_two = {0: TEXTS[0], 5: TEXTS[5]}
    items = build_workload(only_two, 100, mix_probabilities(8, "uniform"), parse_lengths("fixed", 10, 0), 5, seed=0)
    assert {i.cluster for i in items} == {0, 5}
    with pytest.raises(UserError):
        build_workload({}, 10, mix_probabilities(8, "uniform"), parse_lengths("fixed"), 5, seed=0)
    with pytest.raises(UserError):
        mix_probabilities(8, "normal", std=0)
