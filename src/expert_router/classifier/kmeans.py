"""Balanced k-means: every cluster gets about N/k documents while fitting, as in c-BTM.

c-BTM (kernelmachine/balanced-kmeans) solves the balanced assignment with an auction algorithm over
documents and equal-sized cluster slots, an O(N^2) cost matrix. We solve the same assignment problem
with an auction over the k clusters' prices instead (see `balanced_assignment`): O(N*k) memory, the
same optimum. Inference is never balanced: a prompt goes to its nearest centroid.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import sparse
from scipy.optimize import linprog
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import kmeans_plusplus


def squared_distances(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of every point (rows) to every center (columns)."""
    sq = (
        np.einsum("ij,ij->i", points, points)[:, None]
        - 2.0 * points @ centers.T
        + np.einsum("ij,ij->i", centers, centers)[None, :]
    )
    return np.maximum(sq, 0.0, out=sq)


def balanced_assignment(cost: np.ndarray, capacity: int, max_rounds: int = 2_000) -> np.ndarray:
    """Assign each row of `cost` (n x k) to a column, at most `capacity` rows a column, at minimal total cost.

    An auction run from the clusters' side: each cluster carries a price added to its cost, and every
    point takes its cheapest cluster. While a cluster holds more than `capacity` points, its price rises
    just enough for the surplus, those with the smallest margin to their next choice, to move on.
    Prices only rise, and a cluster only loses points when its own price rises, so at the end every
    priced cluster is exactly full: the optimality condition of the transportation problem, with the
    prices as its dual. Each round is one O(n*k) array pass.

    Ties can stall it: a group of identical documents (duplicates) bounces between two full clusters
    whose prices then rise by rounding-sized steps. After `max_rounds` the same problem is handed to
    HiGHS as a linear program (`transport_assignment`): slower per call, never stuck.
    """
    n, k = cost.shape
    if capacity * k < n:
        raise ValueError(f"capacity {capacity} x {k} clusters cannot hold {n} points")
    cost = np.asarray(cost, dtype=np.float64)
    price = np.zeros(k)
    tiny = (float(np.ptp(cost)) or 1.0) * 1e-12
    for _ in range(max_rounds):
        adjusted = cost + price
        labels = np.argmin(adjusted, axis=1)
        surplus = np.bincount(labels, minlength=k) - capacity
        if surplus.max() <= 0:
            return labels
        for cluster in np.flatnonzero(surplus > 0):
            excess = int(surplus[cluster])
            members = np.flatnonzero(labels == cluster)
            own = adjusted[members, cluster]
            others = np.delete(adjusted[members], cluster, axis=1).min(axis=1)
            margins = np.partition(others - own, (excess - 1, min(excess, members.size - 1)))
            # Midway between the last point that must leave and the first that may stay: exactly
            # `excess` points move on unless margins tie.
            if excess < margins.size and margins[excess] > margins[excess - 1]:
                price[cluster] += (margins[excess - 1] + margins[excess]) / 2.0
            else:
                price[cluster] += margins[excess - 1] + tiny
    return transport_assignment(cost, capacity)


def transport_assignment(cost: np.ndarray, capacity: int) -> np.ndarray:
    """The same assignment as a transportation problem solved by HiGHS's dual simplex: its optimum is a
    vertex, and every vertex of this problem is integral, so each row gets one column."""
    n, k = cost.shape
    one_cluster_each = sparse.kron(sparse.eye(n, format="csr"), np.ones((1, k)), format="csr")
    cluster_loads = sparse.kron(np.ones((1, n)), sparse.eye(k, format="csr"), format="csr")
    result = linprog(
        np.ravel(cost),
        A_ub=cluster_loads,
        b_ub=np.full(k, capacity),
        A_eq=one_cluster_each,
        b_eq=np.ones(n),
        bounds=(0, 1),
        method="highs-ds",
    )
    if result.status != 0:
        raise RuntimeError(f"balanced assignment failed: {result.message}")
    return np.asarray(np.argmax(result.x.reshape(n, k), axis=1))


class BalancedKMeans(ClusterMixin, BaseEstimator):
    """Lloyd's k-means whose assignment step gives every cluster at most ceil(N/k) points."""

    def __init__(self, n_clusters: int = 8, max_iter: int = 20, tol: float = 1e-4, random_state: int | None = 0):
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: object = None) -> BalancedKMeans:
        points = np.asarray(X, dtype=np.float64)
        n = points.shape[0]
        if n < self.n_clusters:
            raise ValueError(f"{n} points cannot fill {self.n_clusters} clusters")
        centers, _ = kmeans_plusplus(points, self.n_clusters, random_state=self.random_state)
        capacity = math.ceil(n / self.n_clusters)
        labels = np.zeros(n, dtype=np.int64)
        for iteration in range(1, self.max_iter + 1):  # noqa: B007 (kept as the count of iterations run)
            labels = balanced_assignment(squared_distances(points, centers), capacity)
            new_centers = np.stack([points[labels == c].mean(axis=0) for c in range(self.n_clusters)])
            shift = float(np.sum((new_centers - centers) ** 2))
            centers = new_centers
            if shift <= self.tol * float(np.mean(np.var(points, axis=0))):
                break
        self.cluster_centers_ = centers
        self.labels_ = labels
        self.n_iter_ = iteration
        self.inertia_ = float(squared_distances(points, centers)[np.arange(n), labels].sum())
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.argmin(squared_distances(np.asarray(X, dtype=np.float64), self.cluster_centers_), axis=1)
