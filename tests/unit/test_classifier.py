import json
from pathlib import Path

import numpy as np
import pytest

from expert_router.classifier import Classifier, ClassifierSettings, fit_pipeline
from expert_router.errors import UserError

SETTINGS = ClassifierSettings(k=4, dims=10)


@pytest.fixture(scope="module")
def texts(small_corpus):
    return [text for text, _ in small_corpus]


@pytest.fixture(scope="module", params=["l2", "standard"])
def fitted(request, texts):
    settings = SETTINGS.model_copy(update={"scaling": request.param})
    pipeline = fit_pipeline(texts, settings)
    return pipeline, Classifier.from_pipeline(pipeline, settings)


def test_routes_match_the_scikit_learn_pipeline(fitted, texts):
    pipeline, classifier = fitted
    assert (classifier.route(texts).cluster == pipeline.predict(texts)).all()


def test_distances_match_the_pipeline(fitted, texts):
    pipeline, classifier = fitted
    expected = pipeline[:-1].transform(texts[:20])
    expected = ((expected[:, None, :] - pipeline[-1].cluster_centers_[None]) ** 2).sum(-1)
    assert np.allclose(classifier.route(texts[:20]).distance, expected, atol=1e-3)


def test_single_prompt_routes_like_a_batch(fitted, texts):
    _, classifier = fitted
    batch = classifier.route(texts[:30])
    for i, text in enumerate(texts[:30]):
        one = classifier.route(text)
        assert one.cluster[0] == batch.cluster[i]
        assert np.allclose(one.distance[0], batch.distance[i], atol=1e-5)


def test_unknown_words_and_empty_prompts_route_somewhere(fitted):
    _, classifier = fitted
    routes = classifier.route(["", "zzzz qqqq", "the and of 123"])
    assert routes.distance.shape == (3, 4) and np.isfinite(routes.distance).all()


def test_ranked_is_nearest_first(fitted, texts):
    _, classifier = fitted
    routes = classifier.route(texts[:5])
    for row in range(5):
        ranked = routes.ranked(row)
        assert ranked[0] == routes.cluster[row]
        assert (np.diff(routes.distance[row][ranked]) >= 0).all()


def test_rank_is_the_ranked_route_of_one_text(fitted, texts):
    """The gateway's fast path (one text, centroid products gathered with the terms) gives the order
    the batch path (sparse TF-IDF, SVD, scaling, distances) gives, unknown and empty texts too."""
    _, classifier = fitted
    batch = [*texts, "", "zzzz qqqq", "the and of 123"]
    routes = classifier.route(batch)
    for row, text in enumerate(batch):
        assert classifier.rank(text) == routes.ranked(row).tolist()
        assert classifier.route(text).distance[0] == pytest.approx(routes.distance[row], abs=1e-5)


def test_save_load_round_trip_routes_identically(fitted, texts, tmp_path):
    _, classifier = fitted
    classifier.save(tmp_path / "c")
    loaded = Classifier.load(tmp_path / "c")
    before, after = classifier.route(texts), loaded.route(texts)
    assert np.array_equal(before.cluster, after.cluster)
    assert np.array_equal(before.distance, after.distance)
    assert loaded.settings == classifier.settings
    assert classifier.route(texts[0]).distance.tolist() == loaded.route(texts[0]).distance.tolist()


def test_the_same_seed_gives_the_same_classifier(texts):
    a = Classifier.fit(texts, SETTINGS.model_copy(update={"seed": 3}))
    b = Classifier.fit(texts, SETTINGS.model_copy(update={"seed": 3}))
    assert np.array_equal(a.centroids, b.centroids) and np.array_equal(a.projection, b.projection)


def test_balanced_fit_gives_near_equal_sizes(texts):
    classifier = Classifier.fit(texts, SETTINGS.model_copy(update={"balanced": True, "k": 3}))
    sizes = classifier.train_sizes
    assert sum(sizes) == len(texts) and max(sizes) - min(sizes) <= 1


def test_clusters_follow_topics(small_corpus):
    from sklearn.metrics import normalized_mutual_info_score

    texts, labels = zip(*small_corpus)
    classifier = Classifier.fit(list(texts), SETTINGS)
    assert normalized_mutual_info_score(labels, classifier.route(list(texts)).cluster) > 0.8


def test_k_larger_than_the_corpus_is_refused():
    with pytest.raises(UserError, match="larger than the corpus"):
        Classifier.fit(["one document about cats", "another about dogs"], ClassifierSettings(k=8))


def test_fewer_distinct_documents_than_k_is_refused():
    """Repeated documents are one point: the fit saved k - 3 empty clusters and exit 0."""
    with pytest.raises(UserError, match="3 distinct documents"):
        Classifier.fit(
            ["cats purr softly", "dogs bark loudly", "fish swim slowly"] * 10, ClassifierSettings(k=8, dims=2)
        )


def test_fewer_documents_than_dimensions_is_refused_at_fit(tmp_path):
    """SVD quietly gave fewer components: the fit saved a classifier that load called corrupt."""
    words = ["flour", "sugar", "oven", "kernel", "python", "thread", "goal", "match", "score", "pitch", "wine"]
    texts = [" ".join(words[(i + j) % len(words)] + str(i) * (j % 2) for j in range(8)) for i in range(20)]
    with pytest.raises(UserError, match="at least as many documents"):
        Classifier.fit(texts, ClassifierSettings(k=2, dims=30))


def test_a_corpus_of_stop_words_is_refused():
    with pytest.raises(UserError, match="no usable words"):
        Classifier.fit(["the and of", "a an the 12", "it is 3"], ClassifierSettings(k=2, dims=1))


# -- a corrupt artifact is refused ---------------------------------------------------------------
@pytest.fixture
def saved(texts, tmp_path) -> Path:
    return Classifier.fit(texts, SETTINGS).save(tmp_path / "artifact")


def _manifest(path: Path) -> dict:
    return json.loads((path / "classifier.json").read_text())


def test_a_tampered_array_is_refused(saved):
    centroids = saved / _manifest(saved)["files"]["centroids"]["file"]
    data = bytearray(centroids.read_bytes())
    data[-1] ^= 0xFF
    centroids.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum"):
        Classifier.load(saved)


def test_a_tampered_vocabulary_is_refused(saved):
    vocabulary = saved / "vocabulary.json"
    vocabulary.write_text(vocabulary.read_text().replace('"', "'", 2))
    with pytest.raises(UserError):
        Classifier.load(saved)


def test_standard_scaling_without_its_deviation_is_refused(texts, tmp_path):
    """Only the mean was checked: without `scale_std` the classifier loaded and routed as an L2 one."""
    saved = Classifier.fit(texts, ClassifierSettings(**{**SETTINGS.model_dump(), "scaling": "standard"})).save(
        tmp_path / "standard"
    )
    manifest = _manifest(saved)
    del manifest["files"]["scale_std"]
    (saved / "classifier.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="corrupt"):
        Classifier.load(saved)


def test_another_format_version_is_refused(saved):
    manifest = _manifest(saved)
    manifest["format_version"] = 99
    (saved / "classifier.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="version"):
        Classifier.load(saved)


def test_a_missing_file_is_refused(saved):
    (saved / "vocabulary.json").unlink()
    with pytest.raises(UserError, match="vocabulary.json"):
        Classifier.load(saved)


def test_a_missing_artifact_is_refused(tmp_path):
    with pytest.raises(UserError, match="classifier"):
        Classifier.load(tmp_path / "nothing")


def test_a_pickled_array_is_never_loaded(saved):
    """Even with a matching checksum, an object array (pickle inside .npy) is refused."""
    import hashlib

    manifest = _manifest(saved)
    entry = manifest["files"]["centroids"]
    path = saved / entry["file"]
    np.save(path, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (saved / "classifier.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError):
        Classifier.load(saved)


def test_non_ascii_prompts_route_like_the_pipeline(fitted):
    pipeline, classifier = fitted
    texts = ["Crème brûlée recipe: bake the flour, sugar and butter — “simmer” sauce", "Ünïcödé kernel compiler"]
    assert (classifier.route(texts).cluster == pipeline.predict(texts)).all()
    for text in texts:
        assert classifier.route(text).cluster[0] == pipeline.predict([text])[0]
