"""RunSummary: what one finetune run found, typed. summary.json, `finetune --json`, the report
and the tracker are all its `to_dict()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunSummary:
    """The result of a run, in summary.json's key order (`to_dict`); `from_dict` reads one back
    (the race's winner, moved into the run dir). Optional parts are None when they do not apply:
    no probe without LP-FT, no ECE without calibration, no race outside the race."""

    run_dir: str
    data_dir: str
    model: str
    strategy: str
    trainable_stages: int
    strategy_reasons: list[str]
    classes: list[str]
    num_train: int
    num_val: int
    split_groups_kept_together: int  # near-duplicate / manifest groups a made split kept
    cv: dict[str, Any] | None  # the head's weight decay by cross-validation (--cv)
    val_acc: float  # best.pt's, on val: optimistic (selected_on_val says why)
    best_epoch: int
    best_weights: str  # raw, ema, swa or wise-ft ALPHA
    probe_val_acc: float | None  # the L-BFGS head alone (LP-FT's epoch 0)
    gain_over_probe: float | None  # what fine-tuning added to the probe
    averages: list[dict[str, Any]]  # SWA / WiSE-FT candidates tried on val, and which was kept
    selected_on_val: list[str]  # every choice the val split made
    unbiased_estimate: str  # the command that gives a number no choice has seen
    balance: str  # the class-balance method used (auto resolved)
    temperature: float  # fit on val, stored in best.pt (1.0 without calibration)
    val_ece_before: float | None
    val_ece_after: float | None
    epochs_run: int
    stopped_early: bool
    trainable_params: int
    total_params: int
    device: str
    world_size: int
    seconds: float
    skipped: list[dict[str, Any]]  # files passed over, and why
    paths: dict[str, str]  # best, last, metrics, curves, config, report
    plan: dict[str, Any]  # strategy.Plan.to_dict(): the stages and what each trains
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.csv's rows
    race: dict[str, Any] | None = None  # finetune --strategy auto with the race: its report

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["race"] is None:
            del data["race"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
