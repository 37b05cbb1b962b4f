"""Each setting and each choice is declared once (tlcli/config.py, tlcli/choices.py); the CLI,
configs/default.yaml, the tune space, the dispatch tables and the README must agree with it."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path

import pytest
import typer.core
import typer.main

from tlcli import choices, cli
from tlcli.config import FLAG_SETTINGS, SETTINGS, TUNE_KEYS, Config

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = typer.main.get_command(cli.app).commands
# The commands that build a config (cli.setting_overrides); evaluate's and predict's
# --batch-size and --device are their own options, not config keys.
SETTING_COMMANDS = ("finetune", "lr-find", "tune", "recommend", "doctor")
# `--flags` the README shows that belong to other tools (pip, torchrun, mlflow, tensorboard...).
OTHER_TOOLS_FLAGS = {
    "--nproc_per_node",
    "--nproc-per-node",
    "--backend-store-uri",
    "--logdir",
    "--runs",
    "--write",
    "--datasets",
    "--standalone",
    "--nnodes",
    "--node_rank",
    "--master_addr",
    "--master_port",
}


def options_of(command: str) -> dict[str, typer.core.TyperOption]:
    params = COMMANDS[command].params
    return {opt: p for p in params if p.param_type_name == "option" for opt in p.opts}


def default_yaml_lines() -> dict[str, tuple[str, str]]:
    """{section.key: (value text, comment)} of configs/default.yaml."""
    lines, section = {}, None
    for line in (ROOT / "configs/default.yaml").read_text().splitlines():
        if re.match(r"^\w+:\s*$", line):
            section = line.rstrip(":").strip()
        elif m := re.match(r"^  (\w+):\s*([^#]*?)\s*(?:#\s*(.*))?$", line):
            lines[f"{section}.{m[1]}"] = (m[2], m[3] or "")
    return lines


def test_default_yaml_has_every_key_with_the_declared_comment():
    lines = default_yaml_lines()
    assert list(lines) == list(SETTINGS)
    for key, info in SETTINGS.items():
        assert lines[key][1], f"{key} has no comment in configs/default.yaml"
        assert lines[key][1] == info.doc, f"{key}: default.yaml says {lines[key][1]!r}"


def test_every_setting_option_is_the_declared_one():
    for command in SETTING_COMMANDS:
        for flag, param in options_of(command).items():
            info = FLAG_SETTINGS.get(flag)
            if info is None:
                continue
            assert param.help == info.help_text(), f"{command} {flag}"
            if info.choices:
                enum = param.type_descriptor.annotation
                assert tuple(e.value for e in enum) == info.choice_names, f"{command} {flag}"


def test_finetune_has_an_option_for_every_declared_flag():
    options = options_of("finetune")
    for flag, info in FLAG_SETTINGS.items():
        assert flag in options, f"{info.dotted} declares {flag}, finetune has no such option"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--lr", "0.05", "--no-pretrained", "--opt", "sgd"], {"optim.lr": 0.05}),
        (["--no-cache", "--cv", "3", "--strategy", "head-only"], {"train.cv_folds": 3}),
        (["--drop-path", "0.1", "--no-ema", "--augment", "strong"], {"train.ema": False}),
    ],
)
def test_options_reach_their_config_keys(argv, expected):
    """setting_overrides maps each option to its key by the declared flag."""
    command = COMMANDS["finetune"]
    ctx = command.make_context("finetune", ["data", *argv])
    overrides = cli.setting_overrides(ctx)
    given = {
        f"{s}.{k}": v for s, values in overrides.items() for k, v in values.items() if v is not None
    }
    for dotted, value in expected.items():
        assert given[dotted] == value
    flags = [a for a in argv if a.startswith("--")]
    assert len(given) == len(flags)  # nothing else is set
    if "--no-pretrained" in argv:
        assert given["model.pretrained"] is False
    if "--no-cache" in argv:
        assert given["data.cache"] is False


def test_cli_enums_are_the_registries():
    pairs = {
        cli.Strategy: choices.STRATEGIES,
        cli.Optimizer: choices.OPTIMIZERS,
        cli.Schedule: choices.SCHEDULES,
        cli.Augment: choices.AUGMENTS,
        cli.Balance: choices.BALANCES,
        cli.Track: choices.TRACKERS,
        cli.EvalSplit: choices.EVAL_SPLITS,
        cli.Weights: choices.WEIGHT_CHOICES,
        cli.ExportFormat: choices.EXPORT_FORMATS,
        cli.Quantize: choices.QUANTIZE_CHOICES,
        cli.Budget: choices.BUDGETS,
        cli.Pruner: choices.PRUNERS,
    }
    for enum, names in pairs.items():
        assert issubclass(enum, Enum)
        assert tuple(e.value for e in enum) == names


def test_dispatch_tables_cover_the_registries():
    from tlcli.data.augment import PRESETS
    from tlcli.recommend.measure import BUDGETS
    from tlcli.track import BACKENDS
    from tlcli.train.balance import METHODS
    from tlcli.train.optim import TIMM_OPT, lr_factor

    assert tuple(PRESETS) == choices.AUGMENTS
    assert tuple(TIMM_OPT) == choices.OPTIMIZERS
    assert tuple(BUDGETS) == choices.BUDGETS
    assert tuple(BACKENDS) == choices.TRACKERS
    assert (*METHODS, "auto") == choices.BALANCES
    factors = set()
    for name in choices.SCHEDULES:  # each schedule decays in its own way after warmup
        schedule = Config().schedule
        schedule.name, schedule.warmup_epochs = name, 0.0
        factors.add(round(lr_factor(7, 10, 1, schedule), 6))
    assert len(factors) == len(choices.SCHEDULES)


def test_tune_keys_are_config_keys_and_choices_the_registries():
    from tlcli.tune.space import PARAM_KEYS, default_space

    assert PARAM_KEYS == TUNE_KEYS
    for name, (section, key) in PARAM_KEYS.items():
        assert f"{section}.{key}" in SETTINGS, name
    for name, spec in default_space(1e-3).items():
        assert name in PARAM_KEYS, name
        info = SETTINGS["{}.{}".format(*PARAM_KEYS[name])]
        if spec.type == "categorical":
            assert set(spec.choices) <= set(info.choice_names), name
        elif info.range is not None:
            assert info.range.contains(spec.low) and info.range.contains(spec.high), name


def readme_finetune_options() -> set[str]:
    text = (ROOT / "README.md").read_text()
    paragraph = text[text.index("Options: `--model`") :].split("\n\n")[0]
    paragraph = paragraph.split("Every setting, with a one-line comment")[0]
    return set(re.findall(r"`(--[a-z][a-z-]*)", paragraph))


def test_readme_option_list_is_finetunes():
    documented = readme_finetune_options() - {"--help"}
    flags = {p.opts[0] for p in COMMANDS["finetune"].params if p.param_type_name == "option"}
    flags.discard("--help")
    assert documented - flags == set(), "the README documents options finetune does not have"
    assert flags - documented == set(), "finetune options the README's list leaves out"


def test_every_flag_the_readme_names_exists():
    text = (ROOT / "README.md").read_text()
    known = {opt for c in COMMANDS for opt in options_of(c)} | {"--debug", "--help"}
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9_-]*[a-z0-9])", text))
    assert named - known - OTHER_TOOLS_FLAGS == set()


def test_choice_lists_written_out_are_the_registrys():
    """`--opt a|b|c` in the README names real choices (in finetune's option list: all of
    them), and `a | b | c` in a setting's comment lists every choice."""
    text = (ROOT / "README.md").read_text()
    options = text[text.index("Options: `--model`") :].split("\n\n")[0]
    pattern = r"`(--[a-z][a-z-]*) ([a-z0-9-]+(?:\|[a-z0-9-]+)+)`"
    for flag, listed in re.findall(pattern, text):
        param = next(options_of(c)[flag] for c in COMMANDS if flag in options_of(c))
        names = tuple(e.value for e in param.type_descriptor.annotation)
        assert set(listed.split("|")) <= set(names), flag
        if f"`{flag} {listed}`" in options:
            assert tuple(listed.split("|")) == names, flag
    for info in SETTINGS.values():
        if info.choices and " | " in info.doc:
            listed = re.findall(r"[a-z0-9-]+(?= \||$| \()", info.doc.split(": ")[-1])
            assert tuple(listed) == info.choice_names, info.dotted
