"""Profiles, presets and the paper's deployment files: every name resolves, every number has a source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expert_router.config import load_deployment
from expert_router.emulate import build_config, profiles
from expert_router.emulate.engine import Engine
from expert_router.emulate.outputs import parse_output_lengths
from expert_router.errors import UserError
from expert_router.experiment_file import load_experiment

PAPER = Path(__file__).resolve().parents[2] / "deploy" / "paper"


@pytest.mark.parametrize("table", ["gpus", "models", "dtypes"])
def test_every_profile_names_its_source(table):
    for key in profiles.names(table):
        entry = profiles.load_table(table)[key]
        assert entry.get("source"), f"profiles/{table}.yaml: {key} has no source"


@pytest.mark.parametrize(
    "preset,instances,sequences_at_1k",
    [
        ("paper-a", 1, 1060),
        ("paper-b", 1, 1486),
        ("paper-c", 2, 675),
        ("paper-d", 8, 114),
        ("paper-e", 8, 474),
    ],
)
def test_paper_presets_size_the_kv_cache_from_table_one(preset, instances, sequences_at_1k):
    config, n = build_config(preset)
    assert n == instances
    engine = Engine(config)
    # Table I's KV memory over the model's FP16 K and V per token: how many 1,000-token sequences fit
    assert engine.blocks.capacity_tokens // 1000 == pytest.approx(sequences_at_1k, abs=2)


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="unknown gpu 'h300'"):
        build_config(gpu="h300")
    with pytest.raises(UserError, match="output-lengths"):
        parse_output_lengths("poisson:3")
    with pytest.raises(UserError, match="policy"):
        build_config(policy="lifo")


def test_output_length_draws():
    rng = np.random.default_rng(0)
    exponential = [parse_output_lengths("exponential:294").sample(rng) for _ in range(20000)]
    assert np.mean(exponential) == pytest.approx(294, rel=0.03) and min(exponential) >= 1
    assert parse_output_lengths("fixed:7").sample(rng) == 7


def test_deploy_paper_files_are_valid():
    experiment, _ = load_experiment(PAPER / "experiment.yaml")
    assert [c.name for c in experiment.configurations] == ["A", "B", "C", "D", "E"]
    small, _ = load_experiment(PAPER / "experiment-small.yaml")
    assert max(small.users) <= 25
    for name in "de":
        deployment = load_deployment(PAPER / f"deployment-{name}.yaml")
        assert sorted(e.cluster for e in deployment.experts) == list(range(8))
