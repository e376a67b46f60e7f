import pytest

from expert_router.config import (
    check_against_classifier,
    load_deployment,
    parse_deployment,
)
from expert_router.errors import UserError

GOOD = {
    "classifier": "artifacts/classifier",
    "experts": [
        {"cluster": 0, "model": "expert-0", "endpoints": ["http://127.0.0.1:8100"]},
        {"cluster": 1, "model": "expert-1", "endpoints": ["http://127.0.0.1:8101", "http://127.0.0.1:8102"]},
    ],
    "gateway": {"max_inflight_per_expert": 64},
}


def test_a_good_deployment_resolves_the_classifier_next_to_the_file(tmp_path):
    import yaml

    (tmp_path / "deploy.yaml").write_text(yaml.safe_dump(GOOD))
    deployment = load_deployment(tmp_path / "deploy.yaml")
    assert deployment.classifier == (tmp_path / "artifacts" / "classifier").resolve()
    assert deployment.experts[1].base_urls() == ["http://127.0.0.1:8101", "http://127.0.0.1:8102"]
    assert deployment.gateway.max_inflight_per_expert == 64 and deployment.gateway.fallback == "nearest"


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda d: d["experts"][1].update(endpont=["x"]), "experts.1.endpont: unknown key"),
        (lambda d: d["experts"][0].update(endpoints=["not a url"]), "experts.0.endpoints.0"),
        (lambda d: d["experts"][0].update(endpoints=[]), "experts.0.endpoints"),
        (lambda d: d["experts"][0].pop("model"), "experts.0.model"),
        (lambda d: d["experts"][1].update(cluster=0), "more than one expert"),
        (lambda d: d["gateway"].update(max_inflight_per_expert=0), "gateway.max_inflight_per_expert"),
        (lambda d: d["gateway"].update(fallback="random"), "gateway.fallback"),
        (lambda d: d.update(classifer="x"), "classifer: unknown key"),
        (lambda d: d.pop("experts"), "experts"),
        # Each was accepted and broke routing without a word (every replica down, or an expert unreachable).
        (lambda d: d["experts"][0].update(endpoints=["http://127.0.0.1:8100/v1"]), "without a path"),
        (lambda d: d["experts"][0].update(health_path="health"), "experts.0.health_path"),
        (lambda d: d["experts"][0].update(health_path="/h x"), "experts.0.health_path"),
        (lambda d: d["experts"][0].update(model="expert-router"), "the gateway's own model_name"),
        # Accepted, a client naming the model reached one of the two, and both shared one limit.
        (lambda d: d["experts"][1].update(model=d["experts"][0]["model"]), "have different endpoints"),
    ],
)
def test_bad_keys_are_named(change, named):
    import copy

    document = copy.deepcopy(GOOD)
    change(document)
    with pytest.raises(UserError) as error:
        parse_deployment(document, "deploy.yaml")
    assert named in str(error.value) and "deploy.yaml" in str(error.value)


def test_one_model_may_serve_several_clusters():
    """Same name, same endpoints: one model for two clusters (a client naming it reaches it either way)."""
    import copy

    document = copy.deepcopy(GOOD)
    document["experts"][1].update(model="expert-0", endpoints=["http://127.0.0.1:8100"])
    assert [e.model for e in parse_deployment(document).experts] == ["expert-0", "expert-0"]


def test_not_yaml_or_missing(tmp_path):
    (tmp_path / "bad.yaml").write_text("experts: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_deployment(tmp_path / "bad.yaml")
    with pytest.raises(UserError, match="not found"):
        load_deployment(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="mapping"):
        parse_deployment(["a list"])


def test_experts_must_fit_the_classifier():
    deployment = parse_deployment(GOOD)
    check_against_classifier(deployment, k=2)
    with pytest.raises(UserError, match="only k=1"):
        check_against_classifier(deployment, k=1)
    strict = parse_deployment({**GOOD, "gateway": {"fallback": "none"}})
    with pytest.raises(UserError, match=r"clusters \[2\] have no expert"):
        check_against_classifier(strict, k=3)
