import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from expert_router.classifier.kmeans import BalancedKMeans, balanced_assignment, transport_assignment


@pytest.mark.parametrize("solve", [balanced_assignment, transport_assignment])
@pytest.mark.parametrize("seed", range(5))
def test_balanced_assignment_is_optimal_and_respects_capacity(seed, solve):
    rng = np.random.default_rng(seed)
    n, k = 60, 4
    cost = rng.random((n, k))
    capacity = n // k
    assignment = solve(cost, capacity)
    assert np.bincount(assignment, minlength=k).max() <= capacity
    # The optimum, from the Hungarian method on each cluster repeated `capacity` times.
    rows, cols = linear_sum_assignment(np.repeat(cost, capacity, axis=1))
    optimum = cost[rows, cols // capacity].sum()
    assert cost[np.arange(n), assignment].sum() == pytest.approx(optimum, rel=1e-6)


def test_balanced_kmeans_gives_near_equal_sizes_on_skewed_data():
    rng = np.random.default_rng(0)
    # One big blob and two small ones: plain k-means would follow the blobs.
    points = np.vstack([rng.normal(0, 1, (700, 5)), rng.normal(8, 1, (150, 5)), rng.normal(-8, 1, (150, 5))])
    model = BalancedKMeans(n_clusters=4, random_state=0).fit(points)
    sizes = np.bincount(model.labels_, minlength=4)
    assert sizes.sum() == 1000 and sizes.max() - sizes.min() <= 1


def test_balanced_kmeans_ends_on_duplicate_documents():
    # 50 copies of one document: the auction's prices would bounce between two full clusters forever.
    rng = np.random.default_rng(0)
    points = np.repeat(rng.normal(size=(5, 4)), [50, 3, 3, 3, 1], axis=0)
    model = BalancedKMeans(n_clusters=4, random_state=0).fit(points)
    assert np.bincount(model.labels_, minlength=4).tolist() == [15, 15, 15, 15]


def test_balanced_kmeans_predict_is_nearest_centroid():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(200, 3))
    model = BalancedKMeans(n_clusters=3, random_state=0).fit(points)
    distances = ((points[:, None, :] - model.cluster_centers_[None]) ** 2).sum(-1)
    assert (model.predict(points) == distances.argmin(1)).all()


def test_balanced_kmeans_is_reproducible():
    points = np.random.default_rng(2).normal(size=(300, 4))
    a = BalancedKMeans(n_clusters=5, random_state=7).fit(points)
    b = BalancedKMeans(n_clusters=5, random_state=7).fit(points)
    assert np.array_equal(a.cluster_centers_, b.cluster_centers_)
