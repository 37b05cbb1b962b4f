"""Property tests (Hypothesis) of every helper that turns rows into batches, and back.

batch_indices popped its last batch before assigning, so it wrote one batch too early: for
129 rows in batches of 64 it returned rows 64-128 and 64-127. Rows 0-63 were never seen,
logits no longer lined up with labels (top-1 0.535 instead of 0.953), and 65 rows crashed.
For sizes 1-300 and batch sizes 1-64: every index exactly once, no batch of one where it can
be avoided, and outputs equal to a batch-size-1 run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tlcli.data.augment import PRESETS, BatchAugmenter
from tlcli.data.batches import batch_indices
from tlcli.data.cache import DecodedImages
from tlcli.data.scan import Sample
from tlcli.data.split import stratified_split
from tlcli.inference import predict_logits
from tlcli.progress import NullReporter
from tlcli.train.distributed import World, shard_batches
from tlcli.train.head_fit import extract_features

SIZES = st.integers(1, 300)
BATCH_SIZES = st.integers(1, 64)
SEEDS = st.integers(0, 2**32 - 1)
FAST = settings(max_examples=60, deadline=None)
SLOW = settings(max_examples=25, deadline=None)  # these run a model
SIDE = 8  # pixels of the generated squares: the model's cost is in the batch count
NUM_CLASSES = 3


def generator_or_none(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(seed)


@FAST
@given(n=SIZES, batch_size=BATCH_SIZES, seed=st.none() | SEEDS)
def test_batch_indices_cover_every_row_once(n, batch_size, seed):
    batches = batch_indices(n, batch_size, generator_or_none(seed))
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(n))
    if seed is None:  # evaluation order is input order
        assert rows.tolist() == list(range(n))


@FAST
@given(n=SIZES, batch_size=BATCH_SIZES, seed=st.none() | SEEDS)
def test_batch_indices_avoid_a_batch_of_one(n, batch_size, seed):
    sizes = [len(b) for b in batch_indices(n, batch_size, generator_or_none(seed))]
    if n >= 2 and batch_size >= 2:  # BatchNorm cannot train on one sample
        assert min(sizes) >= 2
    # Full batches, then the rest; a rest of one joins the batch before it.
    expected = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    if len(expected) > 1 and expected[-1] == 1:
        expected[-2:] = [expected[-2] + 1]
    assert sizes == expected


@FAST
@given(n=SIZES, batch_size=BATCH_SIZES, seed=SEEDS)
def test_batch_indices_shuffle_is_reproducible(n, batch_size, seed):
    first = batch_indices(n, batch_size, generator_or_none(seed))
    again = batch_indices(n, batch_size, generator_or_none(seed))
    assert [b.tolist() for b in first] == [b.tolist() for b in again]


@FAST
@given(n=SIZES, batch_size=BATCH_SIZES, seed=SEEDS, world_size=st.integers(1, 4))
def test_shard_batches_give_every_row_to_one_rank_once(n, batch_size, seed, world_size):
    global_batches = batch_indices(n, batch_size, generator_or_none(seed))
    shards = [shard_batches(global_batches, World(r, world_size, r)) for r in range(world_size)]
    assert len({len(s) for s in shards}) == 1  # every rank takes every step (DDP)
    seen = np.concatenate([b for shard in shards for b in shard] or [np.empty(0, int)])
    assert len(seen) == len(set(seen.tolist()))  # no row twice, across ranks and steps
    kept = [b for b in global_batches if world_size == 1 or len(b) >= 2 * world_size]
    assert sorted(seen.tolist()) == sorted(np.concatenate(kept or [seen]).tolist())
    for step, batch in enumerate(kept):
        parts = [shard[step] for shard in shards]
        assert sorted(np.concatenate(parts).tolist()) == sorted(batch.tolist())
        if world_size > 1:
            assert min(len(p) for p in parts) >= 2  # no rank's BatchNorm sees one sample


@st.composite
def labelled_samples(draw) -> tuple[list[Sample], list[str]]:
    counts = draw(st.lists(st.integers(2, 60), min_size=2, max_size=5))
    samples = [
        Sample(Path(f"/data/c{label}/img{i:03d}.jpg"), label)
        for label, count in enumerate(counts)
        for i in range(count)
    ]
    return samples, [f"c{label}" for label in range(len(counts))]


@FAST
@given(data=labelled_samples(), fraction=st.floats(0.01, 0.99), seed=SEEDS, shuffle=SEEDS)
def test_stratified_split_is_a_seeded_partition_per_class(data, fraction, seed, shuffle):
    samples, classes = data
    train, val = stratified_split(samples, classes, fraction, seed)
    keys = [(str(s.path), s.label) for s in train + val]
    assert sorted(keys) == sorted((str(s.path), s.label) for s in samples)  # each once
    for label in range(len(classes)):
        n = sum(s.label == label for s in samples)
        n_val = sum(s.label == label for s in val)
        assert n_val == min(max(1, round(n * fraction)), n - 1)
    # The same seed gives the same split, whatever order the scan listed the files in.
    reordered = list(samples)
    np.random.default_rng(shuffle).shuffle(reordered)
    again_train, again_val = stratified_split(reordered, classes, fraction, seed)
    assert [str(s.path) for s in again_val] == [str(s.path) for s in val]
    assert [str(s.path) for s in again_train] == [str(s.path) for s in train]


class TinyNet(nn.Module):
    """timm's interface (forward_features / forward_head) at a fraction of test_resnet's cost;
    BatchNorm in eval mode, so a row's output must not depend on its batch."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4, NUM_CLASSES)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = x.mean((2, 3))
        return pooled if pre_logits else self.fc(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny batches on a busy machine: several torch threads per op cost 100x more than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_and_augmenter() -> tuple[nn.Module, BatchAugmenter]:
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():  # non-trivial running statistics, so eval mode matters
        model.features[1].running_mean.uniform_(-1, 1)
        model.features[1].running_var.uniform_(0.5, 2)
    augmenter = BatchAugmenter(PRESETS["none"], SIDE, (0.5,) * 3, (0.25,) * 3, NUM_CLASSES)
    return model.eval(), augmenter


def distinct_pixels(n: int) -> np.ndarray:
    """n different images: row i is identifiable from its output."""
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8)


def logits(model, augmenter, pixels, batch_size) -> torch.Tensor:
    return predict_logits(model, pixels, augmenter, torch.device("cpu"), batch_size)


def features(model, augmenter, pixels, batch_size) -> tuple[torch.Tensor, torch.Tensor]:
    labels = np.arange(len(pixels)) % NUM_CLASSES
    images = DecodedImages(pixels, labels, [Path(f"{i}.png") for i in range(len(pixels))], [])
    cpu = torch.device("cpu")
    return extract_features(model, images, augmenter, cpu, batch_size, NullReporter(), "f")


@SLOW
@given(n=SIZES, batch_size=BATCH_SIZES)
def test_predict_logits_equal_a_batch_size_1_run(model_and_augmenter, n, batch_size):
    model, augmenter = model_and_augmenter
    pixels = distinct_pixels(n)
    batched = logits(model, augmenter, pixels, batch_size)
    one_by_one = logits(model, augmenter, pixels, 1)
    assert batched.shape == (n, NUM_CLASSES)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-5)


@SLOW
@given(n=SIZES, batch_size=BATCH_SIZES)
def test_extracted_features_equal_a_batch_size_1_run(model_and_augmenter, n, batch_size):
    model, augmenter = model_and_augmenter
    pixels = distinct_pixels(n)
    feats, labels = features(model, augmenter, pixels, batch_size)
    one_feats, one_labels = features(model, augmenter, pixels, 1)
    assert labels.tolist() == (np.arange(n) % NUM_CLASSES).tolist()  # row order = input order
    assert labels.tolist() == one_labels.tolist()
    torch.testing.assert_close(feats, one_feats, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [65, 129])
def test_one_row_past_a_multiple_of_the_batch_size(model_and_augmenter, n):
    """65 rows in batches of 64 raised IndexError; 129 silently dropped rows 0-63."""
    model, augmenter = model_and_augmenter
    batches = batch_indices(n, 64, None)
    assert [len(b) for b in batches] == {65: [65], 129: [64, 65]}[n]
    pixels = distinct_pixels(n)
    torch.testing.assert_close(
        logits(model, augmenter, pixels, 64), logits(model, augmenter, pixels, 1)
    )
    feats, labels = features(model, augmenter, pixels, 64)
    assert labels.tolist() == (np.arange(n) % NUM_CLASSES).tolist()
    torch.testing.assert_close(feats, features(model, augmenter, pixels, 1)[0])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 400), st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_top1_is_the_exact_fraction_right_and_agrees_with_the_probe_s(n, classes, seed):
    """The loop's val accuracy and the L-BFGS probe's (a float64 mean) must agree exactly,
    or an epoch that ties the probe counts as better (float32 rounds 145/153 up)."""
    from tlcli.train.loop import top1

    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=gen)
    labels = torch.randint(0, classes, (n,), generator=gen)
    right = int((logits.argmax(1) == labels).sum())
    assert top1(logits, labels) == right / n
    assert top1(logits, labels) == (logits.double().argmax(1) == labels).double().mean().item()
