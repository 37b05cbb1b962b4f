"""The search space of `tlcli tune`: defaults from the lecture, overridable in a YAML file.

A space maps parameter names to distributions. The named parameters below are the ones the
lecture says matter (the learning rate first, on a log scale); any other setting can be
searched as `section.key`. A YAML space file lists only what it changes:

    lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    optimizer: {type: categorical, choices: [nesterov, adamw]}
    drop_path_rate: null            # not searched: keeps the config's value
    schedule.warmup_epochs: {type: float, low: 0.0, high: 2.0}

Parsing is strict: an unknown parameter or key, a bad range, or a value the config would
reject is a one-line ConfigError naming the file and the parameter.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlcli.config import TUNE_KEYS, Config, apply_overrides, load_yaml_file
from tlcli.errors import ConfigError, short_repr

# Short names for the settings the lecture says to search, and where each lives: declared
# with the setting (config.setting's tune=).
PARAM_KEYS: dict[str, tuple[str, str]] = TUNE_KEYS
TYPES = ("float", "int", "categorical")
SPEC_KEYS = ("type", "low", "high", "log", "choices")

# The default LR range: one decade either side of the centre (from the lr-find suggestions, or
# optim.lr), log-uniform: the lecture's "search the learning rate on a log scale".
LR_SPAN = 10.0

# Which parameters matter for a trial. A frozen backbone has no LR multiplier, drop-path or
# stage count to tune; the head-only L-BFGS fit takes no LR or optimizer and picks its own
# weight decay on the validation split.
TRAINER_PARAMS = frozenset({"lr", "optimizer", "weight_decay", "label_smoothing", "augment"})
BACKBONE_PARAMS = frozenset({"backbone_lr_mult", "drop_path_rate"})
PARTIAL_PARAMS = frozenset({"trainable_stages"})
CONDITIONAL_PARAMS = TRAINER_PARAMS | BACKBONE_PARAMS | PARTIAL_PARAMS


@dataclass(frozen=True)
class ParamSpec:
    type: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any, name: str) -> Any:
        """Draw a value through an Optuna trial."""
        if self.type == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log)
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(name, list(self.choices))

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return self.low <= value <= self.high and (self.type == "float" or value == int(value))

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        return {"type": self.type, "low": self.low, "high": self.high, "log": self.log}


def default_space(lr_center: float) -> dict[str, ParamSpec]:
    """The lecture's space: LR on a log scale around lr_center, then the rest."""
    return {
        "lr": ParamSpec("float", lr_center / LR_SPAN, lr_center * LR_SPAN, log=True),
        # The lecture: pretrained layers at ~1/10 of the head's LR or less.
        "backbone_lr_mult": ParamSpec("float", 0.01, 0.5, log=True),
        "weight_decay": ParamSpec("float", 1e-5, 0.1, log=True),
        "optimizer": ParamSpec("categorical", choices=("nesterov", "adamw", "rmsprop")),
        "label_smoothing": ParamSpec("float", 0.0, 0.2),
        "augment": ParamSpec("categorical", choices=("light", "standard", "strong")),
        "strategy": ParamSpec("categorical", choices=("head-only", "partial", "full")),
        "trainable_stages": ParamSpec("int", 1, 4),
        "drop_path_rate": ParamSpec("float", 0.0, 0.2),
    }


def config_key(name: str) -> tuple[str, str]:
    """(section, key) of a parameter: a short name, or section.key of the config."""
    if name in PARAM_KEYS:
        return PARAM_KEYS[name]
    section, _, key = name.partition(".")
    fields = {f.name: f for f in dataclasses.fields(Config)}
    if key and section in fields:
        section_type = typing.get_type_hints(Config)[section]
        if key in {f.name for f in dataclasses.fields(section_type)}:
            return section, key
    raise ConfigError(
        f"unknown parameter {short_repr(name)}; use one of {', '.join(PARAM_KEYS)} or a config "
        "key as section.key (see configs/default.yaml)"
    )


def _field_type(section: str, key: str) -> Any:
    section_type = typing.get_type_hints(Config)[section]
    return typing.get_type_hints(section_type)[key]


def _number(value: Any, where: str) -> float:
    # PyYAML (YAML 1.1) reads 1e-4 without a dot as a string.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a number, got {short_repr(value)}")
    return value


def parse_param(name: str, raw: Any, source: str) -> ParamSpec:
    """One entry of a space file -> ParamSpec, checked against the config field it sets."""
    where = f"{source}: {name}"
    section, key = config_key(name)
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where} must be a mapping like {{type: float, low: 0.0, high: 1.0}}, "
            "or null to leave it out of the search"
        )
    unknown = [k for k in raw if k not in SPEC_KEYS]  # YAML keys need not be strings
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {short_repr(unknown[0])}; valid: {', '.join(SPEC_KEYS)}"
        )
    kind = raw.get("type")
    if kind not in TYPES:
        raise ConfigError(
            f"{where}: type must be one of {', '.join(TYPES)}, got {short_repr(kind)}"
        )
    field_type = _field_type(section, key)
    if kind == "categorical":
        spec = _parse_categorical(raw, where)
        values = list(spec.choices)
    else:
        spec = _parse_range(raw, kind, field_type, where)
        values = [spec.low, spec.high]
    for value in values:  # every end or choice must be a setting the config accepts
        try:
            apply_overrides(Config(), {section: {key: value}}, where)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
    return spec


def _parse_categorical(raw: dict, where: str) -> ParamSpec:
    extra = sorted({"low", "high", "log"} & set(raw))
    if extra:
        raise ConfigError(f"{where}: {extra[0]} does not apply to a categorical; use choices")
    choices = raw.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: choices must be a non-empty list")
    if len(set(map(repr, choices))) != len(choices):
        raise ConfigError(f"{where}: choices repeat a value")
    return ParamSpec("categorical", choices=tuple(choices))


def _parse_range(raw: dict, kind: str, field_type: Any, where: str) -> ParamSpec:
    """A float or int range: low < high, whole numbers for int, low > 0 on a log scale."""
    if "choices" in raw:
        raise ConfigError(f"{where}: choices only apply to type categorical")
    if field_type is str or field_type is bool:
        raise ConfigError(f"{where} is a {field_type.__name__} setting; use type categorical")
    if kind == "float" and field_type is int:
        raise ConfigError(f"{where} is an integer setting; use type int")
    for end in ("low", "high"):
        if end not in raw:
            raise ConfigError(f"{where}: {kind} needs low and high")
    low, high = _number(raw["low"], f"{where}.low"), _number(raw["high"], f"{where}.high")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log must be true or false, got {short_repr(log)}")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise ConfigError(f"{where}: an int range needs whole-number low and high")
    if low >= high:
        raise ConfigError(f"{where}: low ({low:g}) must be below high ({high:g})")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {low:g}")
    return ParamSpec(
        kind,
        float(low) if kind == "float" else int(low),
        float(high) if kind == "float" else int(high),
        log,
    )


def parse_space(data: Any, source: str) -> dict[str, ParamSpec | None]:
    """A space mapping (from YAML) -> {name: ParamSpec, or None for 'not searched'}."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of parameter names to distributions")
    space: dict[str, ParamSpec | None] = {}
    for name, raw in data.items():
        name = str(name)
        try:
            config_key(name)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc.message}") from None
        space[name] = None if raw is None else parse_param(name, raw, source)
    keys = [config_key(n) for n, s in space.items() if s is not None]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{source}: two parameters set the same config key; keep one")
    return space


def load_space(path: Path) -> dict[str, ParamSpec | None]:
    return parse_space(load_yaml_file(path, "space file", "--space"), str(path))


def resolve_space(
    user: dict[str, ParamSpec | None], base: Config, lr_center: float
) -> dict[str, ParamSpec]:
    """Defaults overlaid with the user's entries; a strategy fixed by the config (anything
    but auto) is not searched, and a space that also searches it is a contradiction."""
    space: dict[str, ParamSpec | None] = {**default_space(lr_center), **user}
    for name, spec in user.items():  # a short name and its section.key are one parameter
        if name not in PARAM_KEYS and spec is not None:
            for short, key in PARAM_KEYS.items():
                if key == config_key(name):
                    space.pop(short, None)
    fixed = base.strategy.name
    if fixed != "auto":
        if user.get("strategy") is not None:
            raise ConfigError(
                f"the space searches strategy but the config fixes it to {fixed}; "
                "drop --strategy (or strategy.name) or the space's strategy entry"
            )
        space.pop("strategy", None)
    resolved = {name: spec for name, spec in space.items() if spec is not None}
    if "strategy" not in resolved:
        active = active_params(fixed, base.strategy.head_fit)
        if not any(n not in CONDITIONAL_PARAMS or n in active for n in resolved):
            raise ConfigError(
                f"nothing to search with strategy {fixed}: no parameter of the space applies "
                "(head-only's L-BFGS head takes no LR and picks its weight decay on val); use "
                "--strategy partial or full, or --set strategy.head_fit=epochs"
            )
    return resolved


def active_params(strategy: str, head_fit: str) -> set[str]:
    """The conditional parameters that change a trial with this strategy."""
    active: set[str] = set()
    if not (strategy == "head-only" and head_fit == "lbfgs"):
        active |= TRAINER_PARAMS
    if strategy in ("partial", "full"):
        active |= BACKBONE_PARAMS
    if strategy == "partial":
        active |= PARTIAL_PARAMS
    return active


def sample_config(trial: Any, space: dict[str, ParamSpec], base: Config) -> Config:
    """Draw a trial's settings (strategy first: it decides which others matter)."""
    strategy = base.strategy.name
    if "strategy" in space:
        strategy = space["strategy"].suggest(trial, "strategy")
    active = active_params(strategy, base.strategy.head_fit)
    overrides: dict[str, dict[str, Any]] = {"strategy": {"name": strategy}}
    for name, spec in space.items():
        if name == "strategy" or (name in CONDITIONAL_PARAMS and name not in active):
            continue
        section, key = config_key(name)
        overrides.setdefault(section, {})[key] = spec.suggest(trial, name)
    return apply_overrides(base, overrides, f"trial {trial.number}")


def baseline_params(space: dict[str, ParamSpec], base: Config) -> dict[str, Any]:
    """The base config's own values, where the space contains them: enqueued as the first
    trial, so the search never reports a best worse than the defaults it started from."""
    params = {}
    for name, spec in space.items():
        section, key = config_key(name)
        value = getattr(getattr(base, section), key)
        if spec.contains(value):
            params[name] = value
    return params


def space_to_dict(space: dict[str, ParamSpec | None]) -> dict[str, Any]:
    return {name: (spec.to_dict() if spec else None) for name, spec in space.items()}
