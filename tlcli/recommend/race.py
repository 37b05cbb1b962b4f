"""A short race between fine-tuning plans: successive halving over epochs, then a noise-aware
choice on the same val images. Pure: the training is a callback, so the race is table-tested
on synthetic learning curves.

Static transferability scores pick poorly (Agostinelli et al., ECCV 2022; Sorkhei et al. 2025):
the race measures what it recommends. A small val set is noisy (153 images: about +-3 points),
so a difference a paired test cannot tell from chance goes to the cheaper plan.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# Plans whose val accuracy a paired test cannot separate (p at or above this) are a tie.
TIE_ALPHA = 0.05
# Successive halving keeps 1/ETA of the plans at each rung (Jamieson and Talwalkar 2016).
ETA = 2
FIRST_RUNG_EPOCHS = 1
# Partial plans raced: the top K stages (with LP-FT's probe head first).
PARTIAL_STAGES = (1, 2, 4)
BOOTSTRAP_SAMPLES = 2000
HEAD_ONLY = "head-only"


@dataclass(frozen=True)
class Plan:
    name: str  # head-only | partial-K | partial-after-<module> | full
    strategy: str  # head-only | partial | full (strategy.py)
    trainable_stages: int
    epoch_cost: float  # relative cost of one epoch; head-only's L-BFGS fit is its whole cost
    prior: int = 0  # 0 = what the probes' decision picked; larger = further from it

    @property
    def epochs_matter(self) -> bool:
        """head-only's L-BFGS fit has no epochs: it is trained once, at no rung."""
        return self.strategy != HEAD_ONLY


def candidate_plans(
    stage_names: Sequence[str],
    epoch_costs: dict[int, float],
    picked: tuple[str, int],
    earlier_stage_k: int | None = None,
    earlier_stage: str = "",
) -> list[Plan]:
    """The plans raced: head-only, partial with the top 1, 2 and 4 stages, partial from after
    the best earlier stage when the stage probes show one (earlier_stage_k), and full.

    epoch_costs: trainable stages (0 = head-only's one forward pass) -> the cost of an epoch
    (measured: seconds per train image); picked: the probes' decision (strategy, stages),
    which orders the plans (prior 0 for it, larger further from it).
    "Surgical" tuning of one early stage alone (Lee et al., ICLR 2023) is not raced: a
    FreezePlan trains the last K stages, never a stage below frozen ones.
    """
    n = len(stage_names)
    plans = [Plan(HEAD_ONLY, HEAD_ONLY, 0, epoch_costs[0])]
    ks = [k for k in PARTIAL_STAGES if k < n]
    for k in ks:
        plans.append(Plan(f"partial-{k}", "partial", k, epoch_costs[k]))
    if earlier_stage_k and earlier_stage_k < n and earlier_stage_k not in ks:
        name = f"partial-after-{earlier_stage}" if earlier_stage else f"partial-{earlier_stage_k}"
        plans.append(Plan(name, "partial", earlier_stage_k, epoch_costs[earlier_stage_k]))
    plans.append(Plan("full", "full", n, epoch_costs[n]))
    want_k = 0 if picked[0] == HEAD_ONLY else (n if picked[0] == "full" else picked[1])
    plans.sort(key=lambda p: p.trainable_stages)
    return [
        Plan(p.name, p.strategy, p.trainable_stages, p.epoch_cost, abs(p.trainable_stages - want_k))
        for p in plans
    ]


def monotone_costs(seconds: dict[int, float]) -> dict[int, float]:
    """Timed cost per trainable-stage count, made non-decreasing in the count: training more
    stages never costs less (a single timed step on a busy machine can say otherwise)."""
    out: dict[int, float] = {}
    running = 0.0
    for k in sorted(seconds):
        running = max(running, seconds[k])
        out[k] = running
    return out


def rung_epochs(final_epochs: int, first: int = FIRST_RUNG_EPOCHS, eta: int = ETA) -> list[int]:
    """Epochs at each rung: first, first x eta, ... below final_epochs (the winner is then
    continued to final_epochs, outside the race)."""
    rungs, epochs = [], max(1, first)
    while epochs < final_epochs:
        rungs.append(epochs)
        epochs *= eta
    return rungs or [final_epochs]


def survivors_per_rung(num_plans: int, num_rungs: int, eta: int = ETA) -> list[int]:
    """How many plans train at each rung: all at the first, then ceil(previous / eta) while
    that leaves two or more to compare. The race ends there (or after the last rung): one
    survivor alone learns nothing more in the race, and the winner is continued anyway."""
    counts = [num_plans]
    while len(counts) < num_rungs and math.ceil(counts[-1] / eta) >= 2:
        counts.append(math.ceil(counts[-1] / eta))
    return counts


def race_cost(plans: Sequence[Plan], rungs: Sequence[int], eta: int = ETA) -> float:
    """Relative cost of the race (before the winner's continuation), at most: each rung's
    survivors extended to its epochs, the most expensive plans assumed to survive."""
    trained = sorted((p for p in plans if p.epochs_matter), key=lambda p: -p.epoch_cost)
    fixed = sum(p.epoch_cost for p in plans if not p.epochs_matter)
    counts = survivors_per_rung(len(trained), len(rungs), eta)
    total, done = fixed, 0
    for count, epochs in zip(counts, rungs, strict=False):
        total += sum(p.epoch_cost for p in trained[:count]) * (epochs - done)
        done = epochs
    return total


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: b images only plan A gets
    right, c only plan B. Under the null each discordant pair is a fair coin."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b} and {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def discordant(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int]:
    """(right only in a, right only in b) over the same images."""
    if len(a) != len(b):
        raise ValueError(f"paired predictions must cover the same images: {len(a)} vs {len(b)}")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    return only_a, only_b


def paired_bootstrap(
    a: Sequence[bool], b: Sequence[bool], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """Accuracy of a minus b, and its 95% percentile interval over images resampled in pairs."""
    n = len(a)
    if n != len(b) or n == 0:
        raise ValueError(f"paired predictions must cover the same, non-empty images: {n}")
    diffs = [int(x) - int(y) for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(samples))
    low = means[int(0.025 * (samples - 1))]
    high = means[int(math.ceil(0.975 * (samples - 1)))]
    return sum(diffs) / n, low, high


@dataclass
class Comparison:
    """The best plan against another, on the same val images."""

    best: str
    other: str
    best_acc: float
    other_acc: float
    only_best: int  # images only the best plan gets right
    only_other: int
    p_value: float  # exact McNemar
    difference: float
    interval: tuple[float, float]  # paired bootstrap, 95%
    tie: bool


def compare(
    best: str,
    other: str,
    best_right: Sequence[bool],
    other_right: Sequence[bool],
    alpha: float = TIE_ALPHA,
) -> Comparison:
    b, c = discordant(best_right, other_right)
    diff, low, high = paired_bootstrap(best_right, other_right)
    p = mcnemar_exact(b, c)
    n = len(best_right)
    return Comparison(
        best,
        other,
        sum(best_right) / n,
        sum(other_right) / n,
        b,
        c,
        p,
        diff,
        (low, high),
        tie=p >= alpha,
    )


@dataclass
class RungResult:
    plan: str
    epochs: int
    val_acc: float


@dataclass
class RaceResult:
    winner: str
    best: str  # the highest val accuracy (the winner unless a cheaper plan tied it)
    rungs: list[int]
    results: list[RungResult]
    comparisons: list[Comparison]
    notes: list[str] = field(default_factory=list)
    epochs_trained: dict[str, int] = field(default_factory=dict)


# train(plan, epochs) -> the plan's predicted class for each val image, trained to `epochs`
# (continuing its earlier rung, never restarting it).
TrainPlan = Callable[[Plan, int], Sequence[int]]


def rank_key(plan: Plan, acc: float) -> tuple[float, float, int, str]:
    """Higher accuracy first; on equal accuracy the cheaper plan, then the probes' order."""
    return (-acc, plan.epoch_cost, plan.prior, plan.name)


def choose_plan(
    plans: Sequence[Plan],
    correct: dict[str, list[bool]],
    final_epochs: int,
    alpha: float = TIE_ALPHA,
) -> tuple[str, str, list[Comparison], list[str]]:
    """The cheapest plan (cost to train it to final_epochs) that the paired test cannot tell
    from the most accurate one: (winner, best, comparisons, notes)."""
    by_name = {p.name: p for p in plans if p.name in correct}
    acc = {name: sum(r) / len(r) for name, r in correct.items()}
    best = min(by_name.values(), key=lambda p: rank_key(p, acc[p.name])).name
    comparisons = [
        compare(best, name, correct[best], correct[name], alpha)
        for name in sorted(by_name, key=lambda n: rank_key(by_name[n], acc[n]))
        if name != best
    ]

    def total_cost(p: Plan) -> float:
        return p.epoch_cost * (final_epochs if p.epochs_matter else 1)

    tied = [by_name[best]] + [by_name[c.other] for c in comparisons if c.tie]
    winner = min(tied, key=lambda p: (total_cost(p), p.prior, p.name)).name
    notes = []
    if winner != best:
        c = next(c for c in comparisons if c.other == winner)
        notes.append(
            f"tie -> cheaper: {best} ({c.best_acc:.4f}) and {winner} ({c.other_acc:.4f}) "
            f"differ on {c.only_best} + {c.only_other} val images, McNemar p = {c.p_value:.3f} "
            f">= {alpha}: within noise, so the cheaper {winner}"
        )
    return winner, best, comparisons, notes


def run_race(
    plans: Sequence[Plan],
    labels: Sequence[int],
    final_epochs: int,
    train: TrainPlan,
    alpha: float = TIE_ALPHA,
    eta: int = ETA,
) -> RaceResult:
    """Successive halving over rungs of epochs, then choose_plan on the last results.

    head-only (no epochs) is trained once and never pruned: it costs nothing more. Each
    rung keeps the best 1/eta of the epoch-trained plans (ties: the cheaper); the race
    stops once one is left. A pruned plan keeps its last result for the final choice."""
    rungs = rung_epochs(final_epochs, eta=eta)
    fixed = [p for p in plans if not p.epochs_matter]
    alive = [p for p in plans if p.epochs_matter]
    counts = survivors_per_rung(len(alive), len(rungs), eta)
    correct: dict[str, list[bool]] = {}
    results: list[RungResult] = []
    trained: dict[str, int] = {}

    def measure(plan: Plan, epochs: int) -> None:
        predicted = list(train(plan, epochs))
        if len(predicted) != len(labels):
            raise ValueError(f"{plan.name}: {len(predicted)} predictions for {len(labels)} images")
        correct[plan.name] = [int(p) == int(y) for p, y in zip(predicted, labels, strict=True)]
        trained[plan.name] = epochs
        results.append(RungResult(plan.name, epochs, sum(correct[plan.name]) / len(labels)))

    for plan in fixed:
        measure(plan, 0)
    for rung, (count, epochs) in enumerate(zip(counts, rungs, strict=False)):
        alive = alive[:count]
        for plan in alive:
            measure(plan, epochs)
        if rung + 1 < len(counts):
            alive = sorted(alive, key=lambda p: rank_key(p, sum(correct[p.name])))
    winner, best, comparisons, notes = choose_plan(plans, correct, final_epochs, alpha)
    return RaceResult(winner, best, rungs, results, comparisons, notes, trained)
