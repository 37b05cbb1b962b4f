"""The L-BFGS head: as accurate as a mini-batch-trained linear head, standardization folded."""

from __future__ import annotations

import torch
from torch import nn

from tlcli.train.head_fit import fit_head, fit_logistic_regression

NUM_CLASSES = 4
NUM_DIMS = 24
# The L-BFGS head may trail the mini-batch head by at most this much val accuracy.
ACCURACY_SLACK = 0.02


def _overlapping_blobs(seed: int, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian classes that overlap (accuracy well below 1), on very different feature scales
    and offsets, as pooled CNN features are."""
    g = torch.Generator().manual_seed(1234)  # same class centers and scales for every split
    centers = torch.randn(NUM_CLASSES, NUM_DIMS, generator=g)
    scales = torch.logspace(-1, 2, NUM_DIMS)
    offsets = torch.randn(NUM_DIMS, generator=g) * 5
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    points = centers[labels] + 1.3 * torch.randn(len(labels), NUM_DIMS, generator=g)
    return points * scales + offsets, labels


def _minibatch_head_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor
) -> float:
    """The head the epoch loop would train: Adam, batch 32, many epochs (inputs standardized,
    or Adam would spend its steps fighting the feature scales)."""
    torch.manual_seed(0)
    mean, std = train_x.mean(0), train_x.std(0)
    head = nn.Linear(NUM_DIMS, NUM_CLASSES)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(60):
        for idx in torch.randperm(len(train_y)).split(32):
            loss = nn.functional.cross_entropy(head((train_x[idx] - mean) / std), train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return (head((val_x - mean) / std).argmax(1) == val_y).float().mean().item()


def test_lbfgs_head_matches_a_minibatch_head():
    train_x, train_y = _overlapping_blobs(seed=0, per_class=100)
    val_x, val_y = _overlapping_blobs(seed=1, per_class=100)
    fit, trials = fit_head(train_x, train_y, val_x, val_y, NUM_CLASSES)
    baseline = _minibatch_head_accuracy(train_x, train_y, val_x, val_y)
    assert 0.5 < baseline < 0.99  # a problem where the head's quality shows
    assert fit.val_acc >= baseline - ACCURACY_SLACK
    # The returned (W, b) act on raw features and reproduce the reported accuracy.
    raw_acc = ((val_x.double() @ fit.weight.T + fit.bias).argmax(1) == val_y).double().mean()
    assert abs(raw_acc.item() - fit.val_acc) < 1e-9
    assert (
        fit.weight_decay
        == max(trials, key=lambda t: (t["val_acc"], -t["val_loss"]))["weight_decay"]
    )


def test_folded_standardization_gives_the_standardized_logits():
    train_x, train_y = _overlapping_blobs(seed=0, per_class=50)
    val_x, val_y = _overlapping_blobs(seed=1, per_class=50)
    fit, _ = fit_head(train_x, train_y, val_x, val_y, NUM_CLASSES)
    mean = train_x.double().mean(0)
    std = train_x.double().std(0).clamp_min(1e-6)
    weight, bias = fit_logistic_regression(
        (train_x.double() - mean) / std, train_y, NUM_CLASSES, fit.weight_decay
    )
    standardized = ((val_x.double() - mean) / std) @ weight.T + bias
    folded = val_x.double() @ fit.weight.T + fit.bias
    torch.testing.assert_close(folded, standardized, rtol=1e-9, atol=1e-9)


def test_lbfgs_reaches_the_regularized_optimum():
    """At the L-BFGS solution the gradient of the convex objective vanishes."""
    x, y = _overlapping_blobs(seed=2, per_class=40)
    x = (x - x.mean(0)) / x.std(0)
    weight_decay = 1e-2
    weight, bias = fit_logistic_regression(x, y, NUM_CLASSES, weight_decay)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    logits = x.double() @ weight.T + bias
    loss = nn.functional.cross_entropy(logits, y) + 0.5 * weight_decay * weight.pow(2).sum()
    loss.backward()
    assert weight.grad.abs().max() < 1e-5
    assert bias.grad.abs().max() < 1e-5
