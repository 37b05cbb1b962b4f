"""One dataclass tree for every setting, loaded from YAML and `--set section.key=value`.

Each setting is declared once, as a field made by `setting()`: its default, its one-line
comment (the one configs/default.yaml carries), its range or choices, its command-line flag and
its tune name. Validation, the CLI's options and the tune space's keys are derived from these
declarations; tests/unit/test_declarations.py checks default.yaml, the CLI and the README agree.
Validation turns every mistake into a one-line ConfigError.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tlcli.choices import (  # noqa: F401  (re-exported: the config's choice lists)
    AUGMENT_CHOICES,
    AUGMENTS,
    AUTO_BUDGET_CHOICES,
    BALANCE_CHOICES,
    BALANCES,
    DEVICES,
    HEAD_FIT_CHOICES,
    HEAD_FITS,
    OPTIMIZER_INFOS,
    OPTIMIZERS,
    SCHEDULE_CHOICES,
    SCHEDULES,
    STRATEGIES,
    STRATEGY_CHOICES,
    STREAM_CHOICES,
    STREAM_CHOICES_INFO,
    Choice,
    OptimInfo,
    described,
)
from tlcli.errors import ConfigError, short_repr

# A config or space file is a few hundred bytes. These bound what a hostile one can cost:
# YAML aliases (*name) repeat a node without copying it, so 421 bytes can stand for billions
# of values, which the first error message that quoted one tried to print.
MAX_YAML_BYTES = 1_000_000
MAX_YAML_NODES = 10_000  # values, lists and mappings, counted with every alias expanded
# numpy and torch seeds are 32-bit; ints beyond 2^31 have no use in any setting here.
MAX_SEED = 2**32 - 1
MAX_INT_SETTING = 2**31 - 1
# PIL's own decompression-bomb limit: data.max_pixels' default, and the bound of every
# function that decodes (evaluate and predict, which have no config, use it as it is).
DEFAULT_MAX_PIXELS = 178_956_970


@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts: low..high (either end open), plus `also`."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    also: tuple[float, ...] = ()  # accepted outside low..high (0 = off)
    text: str = ""  # how an error message states it

    def contains(self, value: float) -> bool:
        if value in self.also:
            return True
        if self.low is not None and not (value > self.low if self.open_low else value >= self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)


def setting(
    default: Any,
    doc: str,
    check: Range | None = None,
    *,
    choices: tuple[Choice | OptimInfo, ...] = (),
    flag: str | tuple[str, ...] = (),
    cli_help: str = "",
    tune: str = "",
) -> Any:
    """One setting, declared once: its default, the one-line comment of configs/default.yaml
    (`doc`), the range or the choices that validate checks, the command-line flag that sets
    it (finetune's, and lr-find's, tune's, ... where they take it), the CLI's help when it
    says more than `doc`, and its short name in the tune space."""
    flags = (flag,) if isinstance(flag, str) else flag
    metadata = {
        "doc": doc,
        "range": check,
        "choices": choices,
        "flags": flags,
        "cli_help": cli_help,
        "tune": tune,
    }
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    # tf_efficientnet_lite0: 4.7M params, 0.4 GFLOPs, ReLU6 + BN only: trains on a laptop CPU,
    # exports cleanly, and is the model our benchmarks measure (docs/benchmarks.md).
    name: str = setting(
        "tf_efficientnet_lite0.in1k",
        "timm name, hf-hub:ORG/NAME or local-dir:PATH; 4.7M params, CPU-friendly",
        flag=("--model", "-m"),
        cli_help="timm model name, hf-hub:ORG/NAME, or local-dir:PATH (a folder with "
        "config.json and model.safetensors; works offline).",
    )
    pretrained: bool = setting(
        True,
        "start from pretrained weights (false: random init)",
        flag="--no-pretrained",
        cli_help="Random init instead of pretrained weights.",
    )
    drop_rate: float = setting(
        0.0,
        "dropout before the new classifier",
        Range(0, 1, open_high=True, text="0 <= x < 1"),
        flag="--drop-rate",
    )
    drop_path_rate: float = setting(
        0.0,
        "stochastic depth in the backbone (only matters when trained)",
        Range(0, 1, open_high=True, text="0..1"),
        flag="--drop-path",
        tune="drop_path_rate",
    )


@dataclass
class StrategyConfig:
    name: str = setting(
        "auto",
        "auto | head-only | partial | full (auto measures the data and picks)",
        choices=STRATEGY_CHOICES,
        flag="--strategy",
        cli_help="How much of the backbone trains (stages: timm's group_matcher).",
        tune="strategy",
    )
    trainable_stages: int = setting(
        2,
        "partial: how many of the last stages are retrained",
        Range(1, text=">= 1"),
        flag="--trainable-stages",
        tune="trainable_stages",
    )
    head_warmup_epochs: int = setting(
        0, "two-phase recipe: this many head-only epochs first", Range(0, text=">= 0")
    )
    head_fit: str = setting(
        "lbfgs",
        "head-only: full-batch L-BFGS on cached features (lbfgs), or epochs",
        choices=HEAD_FIT_CHOICES,
    )
    head_views: int = setting(
        0,
        "head-only L-BFGS: augmented views per train image added to the fit",
        Range(0, 100, text="0..100"),
    )
    # --strategy auto: quick = the probes' rule; race = each plan trained briefly
    # (successive halving), the winner's run continued (recommend/race.py).
    auto_budget: str = setting(
        "quick",
        "auto: quick (the probes decide) or race (a short race between plans, winner continued)",
        choices=AUTO_BUDGET_CHOICES,
    )


@dataclass
class OptimConfig:
    name: str = setting(
        "adamw",
        "sgd | momentum | nesterov | adagrad | rmsprop | adam | adamw",
        choices=OPTIMIZER_INFOS,
        flag="--opt",
        cli_help="Optimizer.",
        tune="optimizer",
    )
    lr: float = setting(
        1e-3,
        "learning rate of the new head",
        Range(0, 10, open_low=True, text="0 < lr <= 10"),
        flag="--lr",
        tune="lr",
    )
    # Pretrained layers get lr * backbone_lr_mult: a from-scratch LR wrecks their features.
    backbone_lr_mult: float = setting(
        0.1,
        "pretrained layers get lr x this: a from-scratch LR wrecks their features",
        Range(0, 10, text="0..10"),
        flag="--backbone-lr-mult",
        tune="backbone_lr_mult",
    )
    layer_decay: float = setting(
        1.0,
        "<1: each earlier stage gets this factor less LR again",
        Range(0, 1, open_low=True, text="0 < x <= 1"),
        flag="--layer-decay",
    )
    weight_decay: float = setting(
        0.01,
        "decoupled (adamw) or L2 weight decay; biases and norms are not decayed",
        Range(0, 1, open_high=True, text="0 <= x < 1"),
        flag="--weight-decay",
        tune="weight_decay",
    )
    momentum: float = setting(
        0.9,
        "for sgd/momentum/nesterov/rmsprop",
        Range(0, 1, open_high=True, text="0 <= x < 1"),
        flag="--momentum",
    )
    label_smoothing: float = setting(
        0.1,
        "soft targets: 1 - this on the true class",
        Range(0, 1, open_high=True, text="0..1"),
        flag="--label-smoothing",
        tune="label_smoothing",
    )
    clip_grad_norm: float = setting(0.0, "max gradient norm; 0 disables", Range(0, text=">= 0"))


@dataclass
class ScheduleConfig:
    name: str = setting(
        "cosine",
        "LR decay after warmup: cosine | step | exponential | none",
        choices=SCHEDULE_CHOICES,
        flag="--schedule",
        cli_help="LR decay after warmup.",
    )
    warmup_epochs: float = setting(
        1.0,
        "linear warmup protects the pretrained layers from the new head",
        Range(0, text=">= 0"),
        flag="--warmup-epochs",
    )
    min_lr_ratio: float = setting(0.01, "cosine ends at lr x this", Range(0, 1, text="0..1"))
    step_epochs: int = setting(3, "step: decay every this many epochs", Range(1, text=">= 1"))
    gamma: float = setting(
        0.1,
        "step/exponential decay factor (exponential: per epoch)",
        Range(0, 1, open_low=True, text="0 < x <= 1"),
    )


@dataclass
class DataConfig:
    val_split: float = setting(
        0.2,
        "fraction held out when the folder has no val/ split",
        Range(0, 1, open_low=True, open_high=True, text="0 < x < 1"),
        flag="--val-split",
    )
    augment: str = setting(
        "standard",
        "none | light (crop+flip) | standard (+colour) | strong (+RandAugment, mixup)",
        choices=AUGMENT_CHOICES,
        flag="--augment",
        cli_help="Batch-wise augmentation preset.",
        tune="augment",
    )
    batch_size: int = setting(
        32, "images per optimizer step", Range(1, 65536, text="1..65536"), flag="--batch-size"
    )
    workers: int = setting(
        -1,
        "decode threads; -1: pick from the CPU count",
        Range(-1, 256, text="-1 (auto) .. 256"),
        flag="--workers",
    )
    image_size: int = setting(
        0,
        "0: the model's own input size",
        Range(16, 4096, also=(0,), text="0 (model default) or 16..4096"),
        flag="--image-size",
    )
    max_pixels: int = setting(
        DEFAULT_MAX_PIXELS,
        "larger images are refused (decompression bombs); PIL's limit",
        Range(0, open_low=True, text="> 0"),
    )
    cache: bool = setting(
        True,
        "decode each image once into a uint8 cache on disk",
        flag="--no-cache",
        cli_help="Do not write decode/feature caches to disk: decode into RAM (a folder too "
        "large for RAM is streamed from its files).",
    )
    # Read the files every epoch instead of the cache: auto (only when the decoded set would
    # not fit on the cache disk, or in RAM without it), always, never.
    stream: str = setting(
        "auto",
        "read the files every epoch: auto (when the cache would not fit), always, never",
        choices=STREAM_CHOICES_INFO,
    )
    # A seeded split keeps each near-duplicate cluster on one side (no leakage into val).
    group_duplicates: bool = setting(
        True, "a made split keeps each near-duplicate cluster on one side"
    )


@dataclass
class TrainConfig:
    epochs: int = setting(
        10, "epochs to train", Range(1, 100_000, text="1..100000"), flag="--epochs"
    )
    seed: int = setting(
        0,
        "seeds the split, the data order, augmentation and the head init",
        Range(0, MAX_SEED, text=f"0..{MAX_SEED}"),
        flag="--seed",
    )
    device: str = setting("auto", "auto | cpu | cuda | cuda:N | mps", flag="--device")
    patience: int = setting(
        0,
        "early stopping after this many epochs without val gain; 0 disables",
        Range(0, text=">= 0 (0 disables)"),
        flag="--patience",
    )
    cv_folds: int = setting(
        0,
        "head-only L-BFGS: also K-fold accuracy (mean, spread) on train+val; 0 off",
        Range(2, also=(0,), text="0 or >= 2"),
        flag="--cv",
        cli_help="Head-only: also K-fold accuracy on train+val, with mean and spread over folds.",
    )
    ema: bool = setting(
        False,
        "keep an EMA (Polyak average) of the weights and validate it too",
        flag="--ema/--no-ema",
    )
    ema_decay: float = setting(
        0.998,
        "EMA decay per optimizer step",
        Range(0, 1, open_low=True, open_high=True, text="0 < x < 1"),
    )
    amp: bool = setting(True, "bf16/fp16 autocast on CUDA only")
    channels_last: bool = setting(True, "NHWC memory format: ~2x faster convs on CPU and GPU")
    compile: bool = setting(
        False, "torch.compile the model (CUDA only)", flag="--compile/--no-compile"
    )
    monitor_every: int = setting(
        5, "steps between update/weight ratio samples", Range(1, text=">= 1")
    )
    # LP-FT (Kumar et al. 2022): partial/full start from the L-BFGS head on frozen features
    # (epoch 0, a best.pt candidate) instead of a zero head that distorts the features.
    lp_ft: bool = setting(
        True, "partial/full: fit the L-BFGS head on frozen features first (LP-FT), epoch 0"
    )
    # LP-FT's fine-tune stage (train.lp_ft=false keeps optim's LRs): the fitted head's LR is
    # optim.lr x lp_ft_head_lr_mult, and every LR is x lp_ft_lr_scale.
    lp_ft_head_lr_mult: float = setting(
        0.1,
        "LP-FT fine-tune: the fitted head's LR = optim.lr x this",
        Range(0, 10, open_low=True, text="0 < x <= 10"),
    )
    lp_ft_lr_scale: float = setting(
        1.0,
        "LP-FT fine-tune: every LR (head and backbone) x this",
        Range(0, 10, open_low=True, text="0 < x <= 10"),
    )
    lp_ft_label_smoothing: float = setting(
        0.0,
        "LP-FT fine-tune: label smoothing instead of optim.label_smoothing's",
        Range(0, 1, open_high=True, text="0 <= x < 1"),
    )
    lp_ft_temper_head: bool = setting(
        True, "LP-FT: divide the fitted head by its val temperature before fine-tuning"
    )
    lp_ft_freeze_bn: bool = setting(True, "LP-FT fine-tune: BatchNorm keeps its running statistics")
    # Weight averages tried after training, each kept only if it scores higher on val:
    # SWA of the weights at the end of the last swa_epochs epochs (< 2 disables), and
    # WiSE-FT interpolations between the LP-only and the fine-tuned weights.
    swa_epochs: int = setting(
        3,
        "try the average of the last N epochs' weights (kept only if val improves); <2 off",
        Range(0, 100_000, text=">= 0"),
    )
    wise_ft: bool = setting(
        True, "try LP/fine-tuned weight interpolations (WiSE-FT; kept only if val improves)"
    )
    # Class imbalance: none | weights (loss) | sampler | logit-adjust | auto (only when the
    # largest class is imbalance_ratio x the smallest; picked by val balanced accuracy).
    balance: str = setting(
        "auto",
        "none | weights | sampler | logit-adjust | auto (acts only when imbalanced)",
        choices=BALANCE_CHOICES,
        flag="--balance",
        cli_help="Class imbalance.",
    )
    calibrate: bool = setting(
        True, "fit a temperature on val logits (temperature scaling); stored in best.pt"
    )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class SettingInfo:
    """A setting as its declaration says (read from the dataclass field's metadata)."""

    section: str
    key: str
    type: Any
    default: Any
    doc: str
    range: Range | None
    choices: tuple[Choice | OptimInfo, ...]
    flags: tuple[str, ...]
    cli_help: str
    tune: str

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def choice_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.choices)

    def help_text(self) -> str:
        """The command-line help: the declared text, the choices, the range and the default."""
        text = self.cli_help or f"{self.doc}."
        if self.choices:
            text += f" Choices: {described(self.choices)}."
        if self.range is not None:
            text += f" Range: {self.range.text}."
        default = str(self.default).lower() if isinstance(self.default, bool) else self.default
        return f"{text} Default: {default} ({self.dotted})."


def declared_settings() -> dict[str, SettingInfo]:
    """Every setting by section.key, in the order of the dataclasses."""
    settings = {}
    for section in dataclasses.fields(Config):
        section_type = typing.get_type_hints(Config)[section.name]
        hints = typing.get_type_hints(section_type)
        for item in dataclasses.fields(section_type):
            meta = item.metadata
            info = SettingInfo(
                section.name,
                item.name,
                hints[item.name],
                item.default,
                meta["doc"],
                meta["range"],
                meta["choices"],
                meta["flags"],
                meta["cli_help"],
                meta["tune"],
            )
            settings[info.dotted] = info
    return settings


SETTINGS = declared_settings()
# --flag -> the setting it sets: the command line's only option-to-config mapping.
FLAG_SETTINGS = {info.flags[0].split("/")[0]: info for info in SETTINGS.values() if info.flags}
# Short names of the tune space: {name: (section, key)}.
TUNE_KEYS = {info.tune: (info.section, info.key) for info in SETTINGS.values() if info.tune}
_CHOICES = {
    (info.section, info.key): info.choice_names for info in SETTINGS.values() if info.choices
}
_RANGES = {info.dotted: info.range for info in SETTINGS.values() if info.range}


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(cfg)


def _section_types(section: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(section))
    return {f.name: hints[f.name] for f in dataclasses.fields(section)}


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Check a YAML value against a field type; ints are accepted for floats."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        for option in typing.get_args(kind):
            if option is type(None) and value is None:
                return None
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(
            f"{where}: {short_repr(value)} has the wrong type; see configs/default.yaml"
        )
    scalar = _coerce_scalar(value, kind)
    if scalar is not _WRONG_TYPE:
        return scalar
    name = getattr(kind, "__name__", str(kind))
    raise ConfigError(
        f"{where} must be a {name}, got {short_repr(value)}; see configs/default.yaml"
    )


_WRONG_TYPE = object()  # _coerce_scalar's "no": None is a value


def _coerce_scalar(value: Any, kind: Any) -> Any:
    """value as a bool, int, float or str field takes it, or _WRONG_TYPE."""
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 3e-4 as a string, not a float
            try:
                return float(value)
            except ValueError:
                pass
    if kind is str and isinstance(value, str):
        return value
    return _WRONG_TYPE


def apply_overrides(cfg: Config, overrides: dict[str, Any], source: str) -> Config:
    """Return a copy of cfg with a nested {section: {key: value}} mapping applied."""
    if not isinstance(overrides, dict):
        raise ConfigError(
            f"{source}: expected a mapping of sections, got {type(overrides).__name__}"
        )
    cfg = dataclasses.replace(
        cfg, **{f.name: dataclasses.replace(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    )
    sections = {f.name for f in dataclasses.fields(cfg)}
    for section_name, values in overrides.items():
        if section_name not in sections:
            raise ConfigError(
                f"{source}: unknown section {short_repr(section_name)}; "
                f"valid: {', '.join(sorted(sections))}"
            )
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {short_repr(section_name)} must be a mapping")
        section = getattr(cfg, section_name)
        kinds = _section_types(section)
        for key, value in values.items():
            if key not in kinds:
                raise ConfigError(
                    f"{source}: unknown key {section_name}.{key}; valid: {', '.join(sorted(kinds))}"
                )
            setattr(section, key, _coerce(value, kinds[key], f"{section_name}.{key}"))
    validate(cfg)
    return cfg


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def expanded_size(root: yaml.Node, limit: int = MAX_YAML_NODES) -> int | None:
    """How many nodes a composed YAML document holds once every alias is expanded (counted
    up to limit + 1, so a bomb costs no more than its file); None if a node contains itself.

    An alias is the very node its anchor names, so this walks each node once (iteratively:
    a deep document must not exhaust the stack).
    """
    sizes: dict[int, int] = {}
    ancestors: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_counted = stack.pop()
        key = id(node)
        if children_counted:
            ancestors.discard(key)
            sizes[key] = min(limit + 1, 1 + sum(sizes[id(c)] for c in _children(node)))
        elif key in ancestors:
            return None  # a recursive anchor: &a [*a]
        elif key not in sizes:
            ancestors.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))
    return sizes[id(root)]


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> plain values (safe types only), refusing documents that expand too far.

    Raises yaml.YAMLError for text that is not YAML (the caller words it), ConfigError for
    one that is too large, too deep or recursive.
    """
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(
            f"{source} is {len(text):,} characters long, far beyond a config; pass the right file"
        )
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = expanded_size(node)
        if size is None:
            raise ConfigError(f"{source}: a YAML anchor refers to itself; write the values out")
        if size > MAX_YAML_NODES:
            raise ConfigError(
                f"{source}: over {MAX_YAML_NODES:,} values once its YAML aliases (*name) are "
                "expanded; write the values out"
            )
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply for a config; fix it") from None
    except ValueError as exc:  # a 5000-digit int, a 30th of February: YAML's own converters
        raise ConfigError(f"{source}: a value cannot be read ({exc}); fix it") from None
    finally:
        loader.dispose()


def load_yaml_file(path: Path, what: str, option: str) -> Any:
    """A config or space file, read and parsed within bounds; every failure is one line."""
    path = Path(path)
    name = f"{what} {path}"
    if not path.is_file():
        raise ConfigError(f"{name} does not exist; pass a YAML file to {option}")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_YAML_BYTES + 1)
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{name} is not UTF-8 text; save it as UTF-8 YAML") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {name}: {exc.strerror}; check its permissions") from None
    try:
        return parse_yaml(text, name)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"{name} is not valid YAML{at}; fix it") from None


def parse_set_option(item: str) -> dict[str, dict[str, Any]]:
    """`section.key=value` -> {section: {key: value}}, value parsed as YAML (1e-3, true, ...)."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(
            f"--set {short_repr(item)}: expected section.key=value, e.g. optim.lr=3e-4"
        )
    dotted, raw = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = parse_yaml(raw, f"--set {dotted}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return {section: {key: value}}


def load_config(path: Path | None = None, sets: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then each --set in order."""
    cfg = Config()
    if path is not None:
        data = load_yaml_file(path, "config file", "--config") or {}
        cfg = apply_overrides(cfg, data, str(path))
    for item in sets or []:
        cfg = apply_overrides(cfg, parse_set_option(item), f"--set {item}")
    validate(cfg)
    return cfg


def _check_range(ok: bool, what: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{what}={short_repr(value)} is out of range: expected {expected}")


def check_option_range(option: str, value: float | int | None, low: float, high: float) -> None:
    """A command-line value outside low..high, or NaN/inf, as a one-line ConfigError (exit 2).

    The one check of every numeric option that is not a config key (config keys: validate).
    """
    ok = value is None or (math.isfinite(value) and low <= value <= high)
    _check_range(ok, option, value, f"{low:g}..{high:g}")


def _check_finite_and_bounded(cfg: Config) -> None:
    """No NaN or inf in any float setting (`0 <= inf` passes a range), no absurd int."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for item in dataclasses.fields(values):
            value, what = getattr(values, item.name), f"{section.name}.{item.name}"
            if isinstance(value, float):
                _check_range(math.isfinite(value), what, value, "a finite number")
            elif isinstance(value, int) and not isinstance(value, bool):
                _check_range(
                    abs(value) <= MAX_INT_SETTING, what, value, f"|x| <= {MAX_INT_SETTING}"
                )


def validate(cfg: Config) -> None:
    """Reject values that cannot work, with the allowed range in the message."""
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(
                f"{section}.{key}={short_repr(value)} is not one of: {', '.join(choices)}"
            )
    for what, check in _RANGES.items():
        section, key = what.split(".")
        value = getattr(getattr(cfg, section), key)
        _check_range(check.contains(value), what, value, check.text)
    check_device_name(cfg.train.device, "train.device")
    _check_finite_and_bounded(cfg)  # last: a named range above says more when it applies


def check_device_name(device: str, what: str = "--device") -> None:
    """auto, cpu, cuda, cuda:N or mps; whether it exists here is models.pick_device's check."""
    index = device.removeprefix("cuda:")
    if not (device in DEVICES or (device.startswith("cuda:") and index.isdigit())):
        raise ConfigError(f"{what}={device!r}: expected auto, cpu, cuda, cuda:N or mps")


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config saved in a run dir or checkpoint (unknown keys are errors)."""
    return apply_overrides(Config(), data, "saved config")
