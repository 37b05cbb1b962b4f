"""One dataclass tree for every setting, loaded from YAML and `--set section.key=value`.

Defaults here are the single source of truth; `configs/default.yaml` documents them and a
test checks the two agree. Validation turns every mistake into a one-line ConfigError.
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

from tlcli.errors import ConfigError, short_repr

STRATEGIES = ("auto", "head-only", "partial", "full")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = ("cosine", "step", "exponential", "none")
AUGMENTS = ("none", "light", "standard", "strong")
STREAM_CHOICES = ("auto", "always", "never")
HEAD_FITS = ("lbfgs", "epochs")
DEVICES = ("auto", "cpu", "cuda", "mps")
# A config or space file is a few hundred bytes. These bound what a hostile one can cost:
# YAML aliases (*name) repeat a node without copying it, so 421 bytes can stand for billions
# of values, which the first error message that quoted one tried to print.
MAX_YAML_BYTES = 1_000_000
MAX_YAML_NODES = 10_000  # values, lists and mappings, counted with every alias expanded
BALANCES = ("none", "weights", "sampler", "logit-adjust", "auto")


@dataclass
class ModelConfig:
    # tf_efficientnet_lite0: 4.7M params, 0.4 GFLOPs, ReLU6 + BN only: trains on a laptop CPU,
    # exports cleanly, and is the model our benchmarks measure (docs/benchmarks.md).
    name: str = "tf_efficientnet_lite0.in1k"
    pretrained: bool = True
    drop_rate: float = 0.0  # dropout before the new classifier
    drop_path_rate: float = 0.0  # stochastic depth in the backbone (only matters when trained)


@dataclass
class StrategyConfig:
    name: str = "auto"
    trainable_stages: int = 2  # partial: how many of the last stages are retrained
    head_warmup_epochs: int = 0  # two-phase recipe: this many head-only epochs first
    head_fit: str = "lbfgs"  # head-only: full-batch L-BFGS on cached features, or epochs
    head_views: int = 0  # head-only L-BFGS: augmented views per train image added to the fit


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3  # learning rate of the new head
    # Pretrained layers get lr * backbone_lr_mult: a from-scratch LR wrecks their features.
    backbone_lr_mult: float = 0.1
    layer_decay: float = 1.0  # <1: each earlier stage gets this factor less LR again
    weight_decay: float = 0.01
    momentum: float = 0.9  # for sgd/momentum/nesterov/rmsprop
    label_smoothing: float = 0.1
    clip_grad_norm: float = 0.0  # 0 disables


@dataclass
class ScheduleConfig:
    name: str = "cosine"
    warmup_epochs: float = 1.0  # linear warmup protects the pretrained layers from the new head
    min_lr_ratio: float = 0.01  # cosine ends at lr * this
    step_epochs: int = 3  # step: decay every this many epochs
    gamma: float = 0.1  # step/exponential decay factor (exponential: per epoch)


@dataclass
class DataConfig:
    val_split: float = 0.2  # fraction held out when the folder has no val/ split
    augment: str = "standard"
    batch_size: int = 32
    workers: int = -1  # -1: pick from the CPU count
    image_size: int = 0  # 0: the model's own input size
    max_pixels: int = 178_956_970  # larger images are refused (decompression bombs); PIL's limit
    cache: bool = True  # decode each image once into a uint8 cache
    # Read the files every epoch instead of the cache: auto (only when the decoded set would
    # not fit on the cache disk, or in RAM without it), always, never.
    stream: str = "auto"
    # A seeded split keeps each near-duplicate cluster on one side (no leakage into val).
    group_duplicates: bool = True


@dataclass
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    device: str = "auto"
    patience: int = 0  # early stopping after this many epochs without val gain; 0 disables
    cv_folds: int = 0  # head-only L-BFGS: also K-fold accuracy on train+val (0: off)
    ema: bool = False
    ema_decay: float = 0.998
    amp: bool = True  # bf16/fp16 autocast on CUDA only
    channels_last: bool = True  # NHWC memory format: ~2x faster convs on CPU and GPU
    compile: bool = False
    monitor_every: int = 5  # steps between update/weight ratio samples
    # LP-FT (Kumar et al. 2022): partial/full start from the L-BFGS head on frozen features
    # (epoch 0, a best.pt candidate) instead of a zero head that distorts the features.
    lp_ft: bool = True
    # LP-FT's fine-tune stage (train.lp_ft=false keeps optim's LRs): the fitted head's LR is
    # optim.lr x lp_ft_head_lr_mult, and every LR is x lp_ft_lr_scale. Measured (partial, 3
    # epochs, epoch 1 val; docs/benchmarks.md): BatchNorm frozen and head LR = backbone LR
    # kept sign_digits at 0.835 (0.53 with BN updating at any LR), hymenoptera 0.908 (0.935).
    lp_ft_head_lr_mult: float = 0.1  # = optim.backbone_lr_mult's default: one small LR
    lp_ft_lr_scale: float = 1.0
    lp_ft_freeze_bn: bool = True  # LP-FT fine-tune: BatchNorm keeps its running statistics
    # Weight averages tried after training, each kept only if it scores higher on val:
    # SWA of the weights at the end of the last swa_epochs epochs (< 2 disables), and
    # WiSE-FT interpolations between the LP-only and the fine-tuned weights.
    swa_epochs: int = 3
    wise_ft: bool = True
    # Class imbalance: none | weights (loss) | sampler | logit-adjust | auto (only when the
    # largest class is imbalance_ratio x the smallest; picked by val balanced accuracy).
    balance: str = "auto"
    calibrate: bool = True  # temperature scaling fit on val logits, stored in best.pt


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


_CHOICES = {
    ("strategy", "name"): STRATEGIES,
    ("strategy", "head_fit"): HEAD_FITS,
    ("optim", "name"): OPTIMIZERS,
    ("schedule", "name"): SCHEDULES,
    ("data", "augment"): AUGMENTS,
    ("data", "stream"): STREAM_CHOICES,
    ("train", "balance"): BALANCES,
}


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
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 3e-4 as a string, not a float
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    name = getattr(kind, "__name__", str(kind))
    raise ConfigError(
        f"{where} must be a {name}, got {short_repr(value)}; see configs/default.yaml"
    )


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


# numpy and torch seeds are 32-bit; ints beyond 2^31 have no use in any setting here.
MAX_SEED = 2**32 - 1
MAX_INT_SETTING = 2**31 - 1


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
    o, s, d, t, st, m = cfg.optim, cfg.schedule, cfg.data, cfg.train, cfg.strategy, cfg.model
    _check_range(0 < o.lr <= 10, "optim.lr", o.lr, "0 < lr <= 10")
    _check_range(
        0 <= o.backbone_lr_mult <= 10, "optim.backbone_lr_mult", o.backbone_lr_mult, "0..10"
    )
    _check_range(0 < o.layer_decay <= 1, "optim.layer_decay", o.layer_decay, "0 < x <= 1")
    _check_range(0 <= o.weight_decay < 1, "optim.weight_decay", o.weight_decay, "0 <= x < 1")
    _check_range(0 <= o.momentum < 1, "optim.momentum", o.momentum, "0 <= x < 1")
    _check_range(0 <= o.label_smoothing < 1, "optim.label_smoothing", o.label_smoothing, "0..1")
    _check_range(o.clip_grad_norm >= 0, "optim.clip_grad_norm", o.clip_grad_norm, ">= 0")
    _check_range(s.warmup_epochs >= 0, "schedule.warmup_epochs", s.warmup_epochs, ">= 0")
    _check_range(0 <= s.min_lr_ratio <= 1, "schedule.min_lr_ratio", s.min_lr_ratio, "0..1")
    _check_range(s.step_epochs >= 1, "schedule.step_epochs", s.step_epochs, ">= 1")
    _check_range(0 < s.gamma <= 1, "schedule.gamma", s.gamma, "0 < x <= 1")
    _check_range(0 < d.val_split < 1, "data.val_split", d.val_split, "0 < x < 1")
    _check_range(1 <= d.batch_size <= 65536, "data.batch_size", d.batch_size, "1..65536")
    _check_range(-1 <= d.workers <= 256, "data.workers", d.workers, "-1 (auto) .. 256")
    _check_range(
        d.image_size == 0 or 16 <= d.image_size <= 4096,
        "data.image_size",
        d.image_size,
        "0 (model default) or 16..4096",
    )
    _check_range(d.max_pixels > 0, "data.max_pixels", d.max_pixels, "> 0")
    _check_range(1 <= t.epochs <= 100_000, "train.epochs", t.epochs, "1..100000")
    _check_range(t.patience >= 0, "train.patience", t.patience, ">= 0 (0 disables)")
    _check_range(t.cv_folds == 0 or t.cv_folds >= 2, "train.cv_folds", t.cv_folds, "0 or >= 2")
    _check_range(0 < t.ema_decay < 1, "train.ema_decay", t.ema_decay, "0 < x < 1")
    _check_range(t.monitor_every >= 1, "train.monitor_every", t.monitor_every, ">= 1")
    _check_range(0 <= t.seed <= MAX_SEED, "train.seed", t.seed, f"0..{MAX_SEED}")
    _check_range(0 <= t.swa_epochs <= 100_000, "train.swa_epochs", t.swa_epochs, ">= 0")
    _check_range(
        0 < t.lp_ft_head_lr_mult <= 10, "train.lp_ft_head_lr_mult", t.lp_ft_head_lr_mult, "0..10"
    )
    _check_range(0 < t.lp_ft_lr_scale <= 10, "train.lp_ft_lr_scale", t.lp_ft_lr_scale, "0..10")
    _check_range(st.trainable_stages >= 1, "strategy.trainable_stages", st.trainable_stages, ">= 1")
    _check_range(
        st.head_warmup_epochs >= 0, "strategy.head_warmup_epochs", st.head_warmup_epochs, ">= 0"
    )
    _check_range(0 <= st.head_views <= 100, "strategy.head_views", st.head_views, "0..100")
    _check_range(0 <= m.drop_rate < 1, "model.drop_rate", m.drop_rate, "0 <= x < 1")
    _check_range(0 <= m.drop_path_rate < 1, "model.drop_path_rate", m.drop_path_rate, "0..1")
    check_device_name(t.device, "train.device")
    _check_finite_and_bounded(cfg)  # last: a named range above says more when it applies


def check_device_name(device: str, what: str = "--device") -> None:
    """auto, cpu, cuda, cuda:N or mps; whether it exists here is models.pick_device's check."""
    index = device.removeprefix("cuda:")
    if not (device in DEVICES or (device.startswith("cuda:") and index.isdigit())):
        raise ConfigError(f"{what}={device!r}: expected auto, cpu, cuda, cuda:N or mps")


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config saved in a run dir or checkpoint (unknown keys are errors)."""
    return apply_overrides(Config(), data, "saved config")
