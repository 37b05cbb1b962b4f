"""configs/*.yaml against the Config dataclasses, --set parsing, validation and precedence."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from tlcli.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_set_option,
)
from tlcli.errors import EXIT_CONFIG, ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_YAML = CONFIGS / "default.yaml"


def _config_error(**kwargs) -> str:
    """Run load_config(**kwargs), expect a ConfigError, return its (one-line) message."""
    with pytest.raises(ConfigError) as excinfo:
        load_config(**kwargs)
    message = excinfo.value.message
    assert "\n" not in message and message
    assert excinfo.value.exit_code == EXIT_CONFIG
    return message


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


# --- the shipped files ----------------------------------------------------------------------


def test_default_yaml_equals_the_dataclass_defaults():
    assert load_config(DEFAULT_YAML) == Config()
    # Same keys in the same order, so the file cannot silently miss a new setting.
    data = yaml.safe_load(DEFAULT_YAML.read_text())
    expected = config_to_dict(Config())
    assert list(data) == list(expected)
    for section, values in expected.items():
        assert list(data[section]) == list(values), section
        for key, value in values.items():
            assert data[section][key] == value and type(data[section][key]) is type(value), (
                f"{section}.{key}"
            )


def test_default_yaml_has_one_comment_per_setting():
    for line in DEFAULT_YAML.read_text().splitlines():
        if line.startswith("  ") and ":" in line:
            assert "  # " in line, f"no comment: {line.strip()}"


@pytest.mark.parametrize(
    "preset, changes",
    [
        ("head-only", {("strategy", "name"): "head-only"}),
        ("partial", {("strategy", "name"): "partial", ("strategy", "trainable_stages"): 2}),
        (
            "full",
            {
                ("strategy", "name"): "full",
                ("model", "drop_path_rate"): 0.1,
                ("train", "ema"): True,
            },
        ),
    ],
)
def test_presets_change_only_their_keys(preset, changes):
    cfg = config_to_dict(load_config(CONFIGS / f"{preset}.yaml"))
    default = config_to_dict(Config())
    for (section, key), value in changes.items():
        assert cfg[section][key] == value
    different = {
        (section, key)
        for section, values in cfg.items()
        for key, value in values.items()
        if value != default[section][key]
    }
    assert different <= set(changes)


def test_config_round_trips_through_a_dict():
    cfg = load_config(CONFIGS / "full.yaml", ["optim.lr=3e-4"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg)))) == cfg


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, words",
    [
        ("optim:\n  lrr: 0.1\n", ["unknown key optim.lrr", "lr"]),
        ("optimizer:\n  lr: 0.1\n", ["unknown section 'optimizer'", "optim"]),
        ("optim: 3\n", ["'optim' must be a mapping"]),
        ("- a\n- b\n", ["expected a mapping"]),
        ("train:\n  epochs: ten\n", ["train.epochs must be a int", "'ten'"]),
        ("train:\n  epochs: 2.5\n", ["train.epochs", "2.5"]),
        ("train:\n  ema: 1\n", ["train.ema must be a bool"]),
        ("optim:\n  lr: fast\n", ["optim.lr must be a float"]),
        ("model:\n  name: 3\n", ["model.name must be a str"]),
        ("optim:\n  lr: -1\n", ["optim.lr=-1.0 is out of range", "0 < lr <= 10"]),
        ("optim:\n  layer_decay: 1.5\n", ["optim.layer_decay", "out of range"]),
        ("data:\n  val_split: 1.0\n", ["data.val_split", "out of range"]),
        ("data:\n  batch_size: 0\n", ["data.batch_size", "1..65536"]),
        ("data:\n  image_size: 8\n", ["data.image_size", "16..4096"]),
        ("train:\n  epochs: 0\n", ["train.epochs", "out of range"]),
        ("strategy:\n  trainable_stages: 0\n", ["strategy.trainable_stages"]),
        ("strategy:\n  name: some\n", ["strategy.name='some' is not one of", "head-only"]),
        ("data:\n  augment: extreme\n", ["data.augment", "strong"]),
        ("train:\n  device: tpu\n", ["train.device='tpu'", "cuda"]),
        ("optim:\n  lr: [0.1\n", ["not valid YAML", "line"]),
        ("optim:\n\tlr: 0.1\n", ["not valid YAML"]),
    ],
)
def test_bad_files_raise_one_line_config_errors(tmp_path, text, words):
    message = _config_error(path=_write(tmp_path, text))
    for word in words:
        assert word in message, message


def test_missing_file_is_a_config_error(tmp_path):
    assert "does not exist" in _config_error(path=tmp_path / "nope.yaml")


def test_empty_file_and_empty_section_mean_defaults(tmp_path):
    assert load_config(_write(tmp_path, "")) == Config()
    assert load_config(_write(tmp_path, "optim:\n")) == Config()


# --- --set ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "item, section, key, value",
    [
        ("optim.lr=3e-4", "optim", "lr", 3e-4),  # PyYAML reads 3e-4 as a string: coerced
        ("optim.lr=0.0003", "optim", "lr", 3e-4),
        ("optim.lr=1", "optim", "lr", 1.0),  # ints are accepted for floats
        ("train.ema=true", "train", "ema", True),
        ("train.ema=false", "train", "ema", False),
        ("train.compile=True", "train", "compile", True),
        ("train.epochs=3", "train", "epochs", 3),
        ("data.augment=light", "data", "augment", "light"),
        ("train.device=cuda:1", "train", "device", "cuda:1"),
        ("model.name=local-dir:/some/dir", "model", "name", "local-dir:/some/dir"),
        (" strategy.name = partial", "strategy", "name", "partial"),
    ],
)
def test_set_values_are_parsed_and_typed(item, section, key, value):
    cfg = load_config(None, [item])
    got = getattr(getattr(cfg, section), key)
    assert got == value and type(got) is type(value)


def test_parse_set_option_returns_a_nested_mapping():
    assert parse_set_option("optim.lr=3e-4") == {"optim": {"lr": "3e-4"}}
    assert parse_set_option("train.ema=true") == {"train": {"ema": True}}


@pytest.mark.parametrize(
    "item, words",
    [
        ("optim.lr", ["expected section.key=value"]),
        ("lr=3e-4", ["expected section.key=value"]),
        ("optim.lrr=1", ["unknown key optim.lrr"]),
        ("optimizer.lr=1", ["unknown section"]),
        ("optim.lr=abc", ["optim.lr must be a float"]),
        ("optim.lr=", ["optim.lr must be a float"]),
        ("train.ema=1", ["train.ema must be a bool"]),
        ("optim.lr=nan", ["out of range"]),
    ],
)
def test_bad_set_raises_one_line_config_errors(item, words):
    message = _config_error(sets=[item])
    for word in words:
        assert word in message, message


# --- precedence -----------------------------------------------------------------------------


def test_precedence_defaults_then_file_then_set(tmp_path):
    path = _write(tmp_path, "optim:\n  lr: 0.01\n  weight_decay: 0.05\ntrain:\n  epochs: 4\n")
    cfg = load_config(path, ["optim.lr=0.02", "optim.lr=0.03", "train.seed=5"])
    assert cfg.optim.lr == 0.03  # --set beats the file; the last --set wins
    assert cfg.optim.weight_decay == 0.05  # the file beats the default
    assert cfg.train.epochs == 4
    assert cfg.train.seed == 5
    assert cfg.optim.momentum == Config().optim.momentum  # untouched: the default


def test_apply_overrides_copies_and_validates():
    cfg = Config()
    changed = apply_overrides(cfg, {"optim": {"lr": 0.5}}, "test")
    assert changed.optim.lr == 0.5 and cfg.optim.lr == Config().optim.lr  # no mutation
    assert dataclasses.replace(changed.optim, lr=cfg.optim.lr) == cfg.optim
    with pytest.raises(ConfigError):
        apply_overrides(cfg, {"optim": {"lr": 20.0}}, "test")


# --- hostile config files and --set values: bounded work, one short line ---------------------

# 9 anchors of 9 aliases each: 9**9 (387 million) strings in 330 bytes. PyYAML shares the
# aliased nodes, so loading is instant; the first repr of the value was not.
ALIAS_BOMB_LEVELS = "abcdefghi"


def alias_bomb(indent: str = "  ") -> str:
    """A YAML list whose aliases expand to 9**9 strings (a 'billion laughs')."""
    lines = [f'{indent}- &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip(ALIAS_BOMB_LEVELS, ALIAS_BOMB_LEVELS[1:-1], strict=False):
        lines.append(f"{indent}- &{name} [{','.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_fast_in_one_short_line(tmp_path):
    import time

    path = _write(tmp_path, "optim:\n  lr:\n" + alias_bomb("  "))
    assert path.stat().st_size < 450
    started = time.perf_counter()
    message = _config_error(path=path)
    assert time.perf_counter() - started < 2
    assert len(f"error: {message}") <= 300
    assert "aliases" in message and str(path) in message


@pytest.mark.parametrize(
    "text, words",
    [
        ("a: &a [*a]\n", ["anchor refers to itself"]),
        ("[" * 3000 + "]" * 3000 + "\n", ["nested too deeply"]),
        ("optim:\n  lr: " + "9" * 5000 + "\n", ["cannot be read", "digits"]),
        ("optim:\n  lr: 2023-02-30\n", ["cannot be read"]),
    ],
)
def test_hostile_yaml_is_one_line(tmp_path, text, words):
    message = _config_error(path=_write(tmp_path, text))
    for word in words:
        assert word in message, message


def test_config_file_not_utf8_or_unreadable_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"optim:\n  name: caf\xe9\n")
    assert "not UTF-8" in _config_error(path=path)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * 2_000_000 + "\n")
    assert "far beyond a config" in _config_error(path=big)


@pytest.mark.parametrize(
    "item, words",
    [
        ("optim.lr=" + "9" * 100_000, ["cannot be read"]),  # a huge int: Python refuses it
        ("optim.lr=" + "x" * 100_000, ["optim.lr must be a float", "..."]),
        ("optim.name=x\nerror: forged\x1b[2J", ["\\nerror: forged\\x1b[2J"]),
        ("optim.lr=[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
         "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]]",
         ["aliases"]),
        ("optim.name=caf\udce9", ["caf\\udce9"]),  # a non-UTF-8 byte, as the shell passes it
    ],
)  # fmt: skip
def test_huge_or_weird_set_values_are_one_short_line(item, words):
    message = _config_error(sets=[item])
    assert len(message) <= 500 and message.isprintable()
    for word in words:
        assert word in message, message
