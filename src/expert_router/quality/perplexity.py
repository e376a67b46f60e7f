"""Perplexity of a causal LM on texts, encoded exactly as the expert build trains on them.

Each text becomes bos + tokens + eos cut to the build's window (`seq_len`), so the model is measured
on what it was trained to predict, and padding never counts. Perplexity over a set of texts is
exp(total negative log-likelihood / total predicted tokens): long texts weigh by their tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def total_loss(model: Any, ids: np.ndarray, labels: np.ndarray, batch_size: int = 32) -> tuple[float, int]:
    """(sum of next-token negative log-likelihoods, number of predicted tokens) of encoded rows."""
    import torch

    nll, tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            batch = torch.from_numpy(ids[start : start + batch_size])
            target = torch.from_numpy(labels[start : start + batch_size])
            logits = model(input_ids=batch, attention_mask=(target != -100).long()).logits[:, :-1]
            shifted = target[:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), shifted.reshape(-1), ignore_index=-100, reduction="sum"
            )
            nll += float(losses)
            tokens += int((shifted != -100).sum())
    return nll, tokens


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], seq_len: int) -> float:
    """Perplexity of `model` on `texts` (nan when there is nothing to predict)."""
    from expert_router.engine.build import encode_documents

    if not texts:
        return math.nan
    ids, labels = encode_documents(tokenizer, texts, seq_len)
    nll, tokens = total_loss(model, ids, labels)
    return math.exp(nll / tokens) if tokens else math.nan
