"""The c-BTM prompt classifier: fit on a corpus, route prompts to the nearest of k centroids.

Fitting uses scikit-learn (TF-IDF, TruncatedSVD, scaling, k-means). Routing does not: a gateway calls
`route` once per request, and scikit-learn's per-call validation costs more than the arithmetic. The
fitted pipeline is flattened into a few arrays, and routing a prompt is a regex, dictionary look-ups
and two small dense products — the same numbers the pipeline computes, without its overhead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from expert_router.classifier import artifact
from expert_router.classifier.preprocess import (
    ascii_word_tokens,
    make_vectorizer,
    raw_word_tokens,
)
from expert_router.classifier.settings import ClassifierSettings
from expert_router.errors import UserError

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


@dataclass(frozen=True)
class Routes:
    """Where each text goes: its cluster and its squared distance to every centroid (n x k)."""

    cluster: np.ndarray
    distance: np.ndarray

    def ranked(self, row: int) -> np.ndarray:
        """Clusters for text `row`, nearest first: the fail-over order of a gateway."""
        return np.argsort(self.distance[row], kind="stable")


def fit_pipeline(
    texts: Sequence[str], settings: ClassifierSettings, on_stage: Callable[[str], None] | None = None
) -> Pipeline:
    """Fit c-BTM's scikit-learn pipeline: TF-IDF -> SVD -> scaling -> k-means.

    `on_stage` is told the name of each stage as it starts, for a progress display. scikit-learn is
    imported here, not with the module: routing never needs it, and it takes about a second to import.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    from expert_router.classifier.kmeans import BalancedKMeans

    stage = on_stage or (lambda name: None)
    distinct = len(set(texts))
    if distinct < settings.k:  # repeated documents are one point: k-means would leave clusters empty
        raise UserError(f"k={settings.k} is larger than the corpus: only {distinct} distinct documents")
    vectorizer = make_vectorizer(max_features=settings.max_features, min_df=settings.min_df)
    stage("tf-idf")
    try:
        tfidf = vectorizer.fit_transform(texts)
    except ValueError as exc:  # empty vocabulary: only stop-words and numbers
        raise UserError(f"the corpus has no usable words after stop-word removal ({exc})") from None
    n_terms = tfidf.shape[1]
    if settings.dims > len(texts):  # SVD would give fewer components, and the saved artifact not load
        raise UserError(
            f"SVD to {settings.dims} dimensions needs at least as many documents; the corpus has "
            f"{len(texts)}: use a larger corpus or fewer dimensions (--dims)"
        )
    if settings.dims >= n_terms:
        raise UserError(
            f"SVD to {settings.dims} dimensions needs more distinct terms than that; the corpus has "
            f"{n_terms}: use a larger corpus or fewer dimensions (--dims)"
        )
    stage("svd")
    svd = TruncatedSVD(n_components=settings.dims, random_state=settings.seed)
    reduced = svd.fit_transform(tfidf)
    stage("scaling")
    scaler = Normalizer() if settings.scaling == "l2" else StandardScaler()
    scaled = scaler.fit_transform(reduced)
    stage("k-means")
    if settings.balanced:
        kmeans = BalancedKMeans(n_clusters=settings.k, random_state=settings.seed)
    else:
        kmeans = KMeans(n_clusters=settings.k, n_init=3, random_state=settings.seed)
    kmeans.fit(scaled)
    return Pipeline([("tfidf", vectorizer), ("svd", svd), ("scale", scaler), ("kmeans", kmeans)])


class Classifier:
    """A fitted classifier as plain arrays; `route` is the hot path.

    Arrays: `vocabulary` (term per column), `idf`, `projection` (terms x dims: SVD components
    transposed), `scale_mean`/`scale_std` (standard scaling only) and `centroids` (k x dims).
    """

    def __init__(
        self,
        settings: ClassifierSettings,
        vocabulary: Sequence[str],
        idf: np.ndarray,
        projection: np.ndarray,
        centroids: np.ndarray,
        scale_mean: np.ndarray | None = None,
        scale_std: np.ndarray | None = None,
        train_sizes: Sequence[int] | None = None,
    ):
        self.settings = settings
        self.vocabulary = list(vocabulary)
        self.idf = np.ascontiguousarray(idf, dtype=np.float32)
        self.projection = np.ascontiguousarray(projection, dtype=np.float32)
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.scale_mean = None if scale_mean is None else np.asarray(scale_mean, dtype=np.float32)
        self.scale_std = None if scale_std is None else np.asarray(scale_std, dtype=np.float32)
        self.train_sizes = list(train_sizes) if train_sizes is not None else None
        self._index = {term: i for i, term in enumerate(self.vocabulary)}
        self._ascii_index = {term.encode(): i for term, i in self._index.items() if term.isascii()}
        # idf folded into the projection: tf @ (idf * P) = (tf * idf) @ P, one product fewer per call.
        # One extra all-zero row takes every term outside the vocabulary, so no filtering is needed.
        self._unknown = len(self.vocabulary)
        self._idf_sq = np.append(self.idf, 0.0).astype(np.float32) ** 2
        weighted = np.vstack(
            [self.projection * self.idf[:, None], np.zeros((1, self.projection.shape[1]), dtype=np.float32)]
        )
        # Each term's dot products with the centroids ride along as k more columns: summing a prompt's
        # rows then gives its reduced vector and its k centroid products in one gather, no matrix product.
        self._rows = np.ascontiguousarray(np.hstack([weighted, weighted @ self.centroids.T]), dtype=np.float32)
        self._weighted_projection = self._rows[:, : weighted.shape[1]]
        self._centroid_sq = np.einsum("ij,ij->i", self.centroids, self.centroids)
        self._centroid_sq_list: list[float] = self._centroid_sq.tolist()

    # -- fitting -------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        settings: ClassifierSettings | None = None,
        on_stage: Callable[[str], None] | None = None,
    ) -> Classifier:
        settings = settings or ClassifierSettings()
        return cls.from_pipeline(fit_pipeline(texts, settings, on_stage), settings)

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline, settings: ClassifierSettings) -> Classifier:
        """Flatten a fitted `fit_pipeline` result into the arrays that routing needs."""
        from sklearn.preprocessing import StandardScaler

        vectorizer, svd, scaler, kmeans = (pipeline.named_steps[n] for n in ("tfidf", "svd", "scale", "kmeans"))
        vocabulary = vectorizer.get_feature_names_out().tolist()
        standard = isinstance(scaler, StandardScaler)
        labels = getattr(kmeans, "labels_", None)
        return cls(
            settings=settings,
            vocabulary=vocabulary,
            idf=vectorizer.idf_,
            projection=svd.components_.T,
            centroids=kmeans.cluster_centers_,
            scale_mean=scaler.mean_ if standard else None,
            scale_std=scaler.scale_ if standard else None,
            train_sizes=None if labels is None else np.bincount(labels, minlength=settings.k).tolist(),
        )

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write plain arrays and JSON (see `expert_router.classifier.artifact`)."""
        arrays = {name: getattr(self, name) for name in artifact.ARRAYS}
        return artifact.save(directory, artifact.Stored(self.settings, self.vocabulary, arrays, self.train_sizes))

    @staticmethod
    def load(directory: str | Path) -> Classifier:
        """Read an artifact, refusing one that is corrupt, altered or of another format version."""
        stored = artifact.load(directory)
        arrays = stored.arrays
        idf, projection, centroids = arrays["idf"], arrays["projection"], arrays["centroids"]
        assert idf is not None and projection is not None and centroids is not None  # artifact.load checks them
        return Classifier(
            settings=stored.settings,
            vocabulary=stored.vocabulary,
            idf=idf,
            projection=projection,
            centroids=centroids,
            scale_mean=arrays.get("scale_mean"),
            scale_std=arrays.get("scale_std"),
            train_sizes=stored.train_sizes,
        )

    # -- routing -------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        return self.centroids.shape[0]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The scaled SVD vector of each text (n x dims): what k-means sees."""
        if len(texts) == 1:
            reduced = self._reduce_one(texts[0])[None, :]
        else:
            reduced = self._reduce_many(texts)
        return self._scale(reduced)

    def route(self, texts: str | Sequence[str]) -> Routes:
        """Nearest centroid of each text, and its squared distance to every centroid."""
        if isinstance(texts, str):
            if self.scale_mean is None:
                distance = np.array([self._distances_one_l2(texts)], dtype=np.float32)
                return Routes(cluster=np.argmin(distance, axis=1), distance=distance)
            texts = [texts]
        points = self.embed(texts)
        distance = (
            np.einsum("ij,ij->i", points, points)[:, None]
            - 2.0 * points @ self.centroids.T
            + self._centroid_sq[None, :]
        )
        np.maximum(distance, 0.0, out=distance)
        return Routes(cluster=np.argmin(distance, axis=1), distance=distance)

    def rank(self, text: str) -> list[int]:
        """The clusters for one text, nearest first: `route(text).ranked(0)`, the gateway's fail-over order.

        The gateway's hot path: the k distances sorted in Python (stable, as `ranked` is), without the
        `Routes`, argmin and argsort that `route` adds, each a NumPy call costing microseconds of cold
        dispatch code under load.
        """
        if self.scale_mean is None:
            distance = self._distances_one_l2(text)
        else:
            distance = self.route(text).distance[0].tolist()
        return sorted(range(len(distance)), key=distance.__getitem__)

    def _distances_one_l2(self, text: str) -> list[float]:
        """One prompt's squared distances under l2 scaling, the gateway's hot path: one gather and sum,
        one dot product, and k scalars in Python (each NumPy call costs microseconds under load).

        Row normalisation after the SVD cancels any positive factor on the TF-IDF vector, so its norm
        is never needed; summing the rows per token (duplicates included) equals the term-count vector
        times the projection; and with the reduced vector r at unit length, |r - c|² = |c|² - 2 r·c + 1.
        """
        rows = self._rows.take(self._term_ids(text), axis=0).sum(axis=0)  # take: cheaper than [ ]
        dims = self.projection.shape[1]
        reduced = rows[:dims]
        norm_sq = float(reduced @ reduced)
        if norm_sq == 0.0:
            return list(self._centroid_sq_list)  # the zero vector, as the batch path gives it
        factor = 2.0 / math.sqrt(norm_sq)
        return [max(sq - factor * dot + 1.0, 0.0) for sq, dot in zip(self._centroid_sq_list, rows[dims:].tolist())]

    def routing_rows(self) -> tuple[np.ndarray, list[float]]:
        """What `rank`'s l2 path sums, for a router outside Python (`expert_router.nginx`): one row per
        vocabulary term (its idf-weighted projection, then its k centroid products) and |c|^2 per
        centroid."""
        return self._rows[: len(self.vocabulary)], list(self._centroid_sq_list)

    def _term_ids(self, text: str) -> list[int]:
        # Most prompts are ASCII: bytes.translate + split tokenizes them far faster than a regex.
        # map(dict.get, keys, defaults) runs the look-ups in C; unknown terms land in column `_unknown`.
        if text.isascii():
            return list(map(self._ascii_index.get, ascii_word_tokens(text), repeat(self._unknown)))
        return list(map(self._index.get, raw_word_tokens(text), repeat(self._unknown)))

    def _reduce_one(self, text: str) -> np.ndarray:
        terms, counts = np.unique(np.asarray(self._term_ids(text), dtype=np.int64), return_counts=True)
        weights = counts.astype(np.float32)
        norm = np.sqrt(np.dot(weights * weights, self._idf_sq[terms]))
        if norm == 0.0:
            return np.zeros(self.projection.shape[1], dtype=np.float32)
        return (weights @ self._weighted_projection[terms]) / norm

    def _reduce_many(self, texts: Sequence[str]) -> np.ndarray:
        from scipy import sparse

        rows = [self._term_ids(text) for text in texts]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=indptr[1:])
        indices = np.fromiter(chain.from_iterable(rows), dtype=np.int32, count=int(indptr[-1]))
        counts = sparse.csr_matrix(
            (np.ones(indices.size, dtype=np.float32), indices, indptr),
            shape=(len(rows), self._unknown + 1),
        )
        counts.sum_duplicates()
        norms = np.sqrt(counts.multiply(counts) @ self._idf_sq)
        norms[norms == 0] = 1.0
        return np.asarray(counts @ self._weighted_projection) / norms[:, None]

    def _scale(self, reduced: np.ndarray) -> np.ndarray:
        if self.scale_mean is not None and self.scale_std is not None:
            return (reduced - self.scale_mean) / self.scale_std
        norms = np.linalg.norm(reduced, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        return reduced / norms

    # -- inspection ----------------------------------------------------------------------------
    def top_terms(self, n: int = 10) -> list[list[str]]:
        """The terms that weigh most in each centroid, mapped back to TF-IDF space (as c-BTM shows)."""
        centroids = self.centroids.astype(np.float64)
        if self.scale_mean is not None and self.scale_std is not None:
            centroids = centroids * self.scale_std + self.scale_mean
        term_weights = centroids @ self.projection.T.astype(np.float64)
        order = np.argsort(-term_weights, axis=1)[:, :n]
        return [[self.vocabulary[j] for j in row] for row in order]
