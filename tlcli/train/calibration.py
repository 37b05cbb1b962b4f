"""Temperature scaling (Guo et al., ICML 2017): one scalar T, fit on val, logits / T.

Fine-tuned networks are overconfident; dividing the logits by a T > 1 fit by L-BFGS on the
validation NLL makes their probabilities mean what they say, and never changes a top-1
label (argmax is invariant under a positive scale). T lives in the checkpoint (`temperature`,
a float; 1.0 when absent, so older checkpoints load) and is applied inside the loaded model
(`inference.with_temperature`), so evaluate, predict and the exported graph all see the
calibrated logits.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from tlcli.checkpoint import MAX_TEMPERATURE, MIN_TEMPERATURE

# T is searched as log T from 1.0, inside MIN_TEMPERATURE..MAX_TEMPERATURE (tlcli/checkpoint.py
# refuses a checkpoint whose T is outside them).
LBFGS_MAX_ITER = 100


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T that minimises the mean NLL of softmax(logits / T) (L-BFGS on log T)."""
    z = logits.detach().double()
    y = labels.long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_t], lr=0.5, max_iter=LBFGS_MAX_ITER, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    t = float(log_t.detach().exp())
    return min(max(t, MIN_TEMPERATURE), MAX_TEMPERATURE) if math.isfinite(t) else 1.0


def softening_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """fit_temperature, but never below 1: LP-FT divides an over-confident probe by it and
    leaves an under-confident or perfectly separating one as it is (sharpening it would make
    the few confident mistakes of the fine-tune's augmented images weigh more)."""
    return max(1.0, fit_temperature(logits, labels))


def uncalibrated_probabilities(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(z) from softmax(z / T): p^T renormalised (exact for one view; the mean of two
    TTA views is close)."""
    if temperature == 1.0:
        return probs
    log_p = np.log(np.clip(probs, 1e-300, None)) * temperature
    log_p -= log_p.max(axis=1, keepdims=True)
    raw = np.exp(log_p)
    return raw / raw.sum(axis=1, keepdims=True)
