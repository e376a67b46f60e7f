"""How a classifier is fitted: the settings stored with every saved classifier."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Scaling = Literal["l2", "standard"]


class ClassifierSettings(BaseModel):
    """How a classifier is fitted. Stored in the artifact so a reader knows what produced it."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(8, ge=1, description="number of clusters, one expert each")
    dims: int = Field(100, ge=1, description="TruncatedSVD dimensions")
    scaling: Scaling = Field(
        "l2",
        description=(
            "'l2': unit-length rows, what c-BTM's code (and so the paper's deployed router) does; "
            "'standard': zero mean and unit variance per dimension, as the paper's text describes"
        ),
    )
    balanced: bool = Field(False, description="c-BTM balanced k-means: about N/k documents per cluster")
    seed: int = 0
    max_features: int | None = Field(None, ge=1, description="cap on the TF-IDF vocabulary")
    min_df: int = Field(1, ge=1, description="minimum number of documents a term must appear in")
