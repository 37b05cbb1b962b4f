"""CLI-side rendering: Rich progress bars for the library's Reporter callbacks, and tables."""

from __future__ import annotations

import os
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape as escape_markup
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from tlcli.errors import printable
from tlcli.interrupt import raise_if_interrupted

LEVEL_STYLE = {"info": "dim", "warning": "yellow", "error": "red"}


def shown(text: object) -> str:
    """text as a table cell, note or line prints it: control characters and undecodable bytes
    spelled out (errors.printable: a file name cannot clear the screen or forge a line), and
    Rich markup taken literally (a file named "IMG [1].jpg" is not a style)."""
    return escape_markup(printable(text))


class RichReporter:
    """Implements tlcli.progress.Reporter with transient Rich bars on stderr."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, task: str, total: int | None, description: str = "") -> None:
        raise_if_interrupted()  # a Ctrl-C that Python swallowed (see tlcli/interrupt.py)
        self.finish(task)
        self.tasks[task] = self.progress.add_task(shown(description or task), total=total)

    def advance(self, task: str, amount: int = 1) -> None:
        raise_if_interrupted()
        if task in self.tasks:
            self.progress.advance(self.tasks[task], amount)

    def finish(self, task: str) -> None:
        if task in self.tasks:
            self.progress.remove_task(self.tasks.pop(task))

    def epoch(self, row: dict[str, Any]) -> None:
        self.console.print(format_epoch(row), highlight=False, soft_wrap=True)

    def note(self, message: str, level: str = "info") -> None:
        style = LEVEL_STYLE.get(level, "")
        prefix = "warning: " if level == "warning" else ""
        self.console.print(f"[{style}]{prefix}{shown(message)}[/]", highlight=False, soft_wrap=True)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_epoch(row: dict[str, Any]) -> str:
    parts = [
        f"epoch {row['epoch']:>3}",
        f"train loss {_fmt(row.get('train_loss'), '.4f')} acc {_fmt(row.get('train_acc'), '.4f')}",
        f"val loss {_fmt(row.get('val_loss'), '.4f')} acc {_fmt(row.get('val_acc'), '.4f')}",
    ]
    if row.get("ema_val_acc") is not None:
        parts.append(f"ema acc {row['ema_val_acc']:.4f}")
    if row.get("lr") is not None:
        parts.append(f"lr {row['lr']:.2e}")
    if row.get("update_ratio") is not None:
        parts.append(f"upd/w head {row['update_ratio']:.1e}")
    if row.get("backbone_update_ratio") is not None:
        parts.append(f"backbone {row['backbone_update_ratio']:.1e}")
    parts.append(f"{row.get('seconds', 0):.1f}s")
    return " | ".join(parts)


def _probe_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """LP-FT: what fine-tuning added over its own linear probe (epoch 0)."""
    probe, gain = summary.get("probe_val_acc"), summary.get("gain_over_probe")
    if probe is None or gain is None or summary["strategy"] == "head-only":
        return []
    return [("over the probe", f"{gain:+.4f} (fine-tuning; the L-BFGS head alone: {probe:.4f})")]


def _selection_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Honest selection: the val split picked these, so its accuracy is optimistic."""
    chosen = summary.get("selected_on_val")
    if not chosen:
        return []
    rows = []
    if summary.get("val_ece_before") is not None:
        rows.append(
            (
                "temperature",
                f"{summary['temperature']:.3f}: val ECE {summary['val_ece_before']:.4f} -> "
                f"{summary['val_ece_after']:.4f}",
            )
        )
    return rows + [
        ("chosen on val", ", ".join(chosen) + ": val accuracy is optimistic"),
        ("unbiased number", summary["unbiased_estimate"]),
    ]


def finetune_summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="finetune summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = [
        (
            "val accuracy",
            f"{summary['val_acc']:.4f} (epoch {summary['best_epoch']}, "
            f"{summary['best_weights']} weights)",
        ),
        *_probe_rows(summary),
        (
            "strategy",
            summary["strategy"]
            + (
                f" ({summary['trainable_stages']} stages)"
                if summary["strategy"] == "partial"
                else ""
            ),
        ),
        ("trainable params", f"{summary['trainable_params']:,} of {summary['total_params']:,}"),
        (
            "images",
            f"{summary['num_train']} train, {summary['num_val']} val, "
            f"{len(summary['skipped'])} skipped"
            + (
                f"; split kept {summary['split_groups_kept_together']} group(s) "
                "(near-duplicates, manifest groups) on one side"
                if summary.get("split_groups_kept_together")
                else ""
            ),
        ),
        (
            "epochs",
            f"{summary['epochs_run']}" + (" (early stop)" if summary["stopped_early"] else ""),
        ),
        ("time", f"{summary['seconds']:.1f}s on {summary['device']}"),
        *(
            [
                (
                    "cross-validation",
                    f"{cv['folds']} folds of {cv['images']} train+val images: "
                    f"{cv['mean']:.4f} +- {cv['std']:.4f} (sd over folds; "
                    f"{min(cv['fold_accuracy']):.4f}-{max(cv['fold_accuracy']):.4f})",
                )
            ]
            if (cv := summary.get("cv"))
            else []
        ),
        ("best checkpoint", shown(summary["paths"]["best"])),
        ("curves", shown(summary["paths"]["curves"])),
        *_selection_rows(summary),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


# Beyond this many classes the terminal confusion matrix is unreadable: the PNG is the view.
TERMINAL_CM_MAX_CLASSES = 12
TERMINAL_TOP_CONFUSED = 5
TERMINAL_MISCLASSIFIED = 10
# predict's runners-up column: about two "class 0.123" entries per line.
TERMINAL_RUNNERS_UP_WIDTH = 30


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _grid(title: str) -> Table:
    """A borderless table: many numeric columns still fit an 80-column terminal or log."""
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )


def _path_under(path: str, base: str) -> str:
    """path relative to base when it lies under it, else as given."""
    full = os.path.abspath(path)
    return os.path.relpath(full, base) if full.startswith(base.rstrip(os.sep) + os.sep) else path


def evaluation_tables(report: dict[str, Any]) -> list[Table]:
    """`tlcli evaluate`: models side by side, then the primary model's detail."""
    primary = report["primary"]
    detail = (
        report["ensemble"]["report"]
        if report["ensemble"]
        else next(m["report"] for m in report["models"] if m["name"] == primary)
    )
    tables = [
        _evaluation_head(report),
        _models_table(report),
        _per_class_table(detail, primary),
    ]
    if len(report["classes"]) <= TERMINAL_CM_MAX_CLASSES:
        tables.append(_confusion_table(detail, report["classes"]))
    if detail["most_confused"]:
        tables.append(_most_confused_table(detail, len(report["classes"])))
    if detail["misclassified"]:
        tables.append(_misclassified_table(detail, report["folders"]))
    tables.append(_calibration_table(detail, (report.get("files") or {}).get("reliability")))
    return tables


def _evaluation_head(report: dict[str, Any]) -> Table:
    folders = ", ".join(report["folders"])
    head = Table(title="evaluation", show_header=False, title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    head.add_row("data", shown(f"{folders} (split {report['split']})"))
    head.add_row(
        "images",
        f"{report['num_images']} scored, {len(report['skipped'])} skipped; classes present "
        f"{len(report['folder_classes'])} of {len(report['classes'])}",
    )
    head.add_row("test-time augmentation", report["tta"] or "off")
    return head


def _models_table(report: dict[str, Any]) -> Table:
    """One row per model (and the ensemble's, in bold)."""
    entries = [(m["name"], m["weights"], m["summary"]) for m in report["models"]]
    if report["ensemble"]:
        entries.append(("ensemble", "-", report["ensemble"]["summary"]))
    has_top5 = entries[0][2]["top5"] is not None  # None below 5 classes: no column
    models = _grid("models")
    models.add_column("model", overflow="fold")
    models.add_column("weights")
    metrics = ["top-1", "correct", *(["top-5"] if has_top5 else []), "loss", "bal. acc"]
    for name in [*metrics, "macro F1", "ECE"]:
        models.add_column(name, justify="right")
    if report["ensemble"]:
        models.caption = "ensemble: mean of the models' softmax probabilities"
    for name, weights, s in entries:
        models.add_row(
            shown(name),
            weights,
            _pct(s["top1"]),
            f"{s['num_correct']}/{report['num_images']}",
            *([_pct(s["top5"])] if has_top5 else []),
            f"{s['loss']:.4f}",
            _pct(s["balanced_accuracy"]),
            f"{s['macro_f1']:.4f}",
            f"{s['ece']:.4f}",
            style="bold" if name == "ensemble" else None,
        )
    return models


def _per_class_table(detail: dict[str, Any], primary: str) -> Table:
    per_class = _grid(f"per class ({shown(primary)})")
    per_class.add_column("class", overflow="fold")
    for name in ("precision", "recall", "F1", "support"):
        per_class.add_column(name, justify="right")
    for row in detail["per_class"]:
        per_class.add_row(
            shown(row["class"]),
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            str(row["support"]),
        )
    per_class.caption = (
        f"macro F1 {detail['macro_f1']:.4f}, weighted F1 {detail['weighted_f1']:.4f}"
    )
    return per_class


def _confusion_table(detail: dict[str, Any], classes: list[str]) -> Table:
    # Short title: Rich wraps a title to the table's width; the corner header says it all.
    cm = _grid("confusion matrix")
    cm.add_column("true \\ pred", style="bold")
    for name in classes:
        cm.add_column(shown(name), justify="right")
    for i, row in enumerate(detail["confusion_matrix"]):
        cm.add_row(
            shown(classes[i]),
            *(
                f"[bold]{v}[/]" if i == j else (str(v) if v else "[dim]0[/]")
                for j, v in enumerate(row)
            ),
        )
    return cm


def _most_confused_table(detail: dict[str, Any], num_classes: int) -> Table:
    title = "most confused"
    if num_classes > TERMINAL_CM_MAX_CLASSES:
        title += f" ({num_classes} classes: the full matrix is in --report-dir's PNG)"
    confused = _grid(title)
    confused.add_column("true")
    confused.add_column("predicted as")
    confused.add_column("count", justify="right")
    for pair in detail["most_confused"][:TERMINAL_TOP_CONFUSED]:
        confused.add_row(shown(pair["true"]), shown(pair["predicted"]), str(pair["count"]))
    return confused


def _misclassified_table(detail: dict[str, Any], folders: list[str]) -> Table:
    wrong = detail["misclassified"]
    listed = wrong[:TERMINAL_MISCLASSIFIED]
    missed = _grid(f"misclassified, most confident first ({len(listed)} of {len(wrong)})")
    # Relative to the folder scored (named in the head table): long paths wrapped the rows.
    base = os.path.commonpath([os.path.abspath(f) for f in folders])
    missed.caption = f"paths relative to the data folder above; --json lists all {len(wrong)}"
    missed.add_column("file", overflow="fold")  # a path is useless cut short
    missed.add_column("true")
    missed.add_column("predicted")
    missed.add_column("confidence", justify="right")
    for item in listed:
        missed.add_row(
            shown(_path_under(item["path"], base)),
            shown(item["true"]),
            shown(item["predicted"]),
            f"{item['confidence']:.3f}",
        )
    return missed


def _calibration_table(detail: dict[str, Any], diagram: str | None) -> Table:
    calibration = Table(title="calibration", show_header=False, title_justify="left")
    calibration.add_column(style="bold")
    calibration.add_column()
    calibration.add_row(
        "expected calibration error", f"{detail['ece']:.4f} ({len(detail['reliability'])} bins)"
    )
    if detail.get("temperature", 1.0) != 1.0:
        calibration.add_row(
            "before temperature scaling",
            f"ECE {detail['ece_before_temperature']:.4f} (T = {detail['temperature']:.3f}, fit on "
            "the run's val split)",
        )
    calibration.add_row("reliability diagram", shown(diagram) if diagram else "with --report-dir")
    mean_conf = sum((b["confidence"] or 0) * b["count"] for b in detail["reliability"]) / max(
        detail["n"], 1
    )
    calibration.add_row("mean confidence vs accuracy", f"{mean_conf:.4f} vs {detail['top1']:.4f}")
    return calibration


def prediction_table(report: dict[str, Any]) -> Table:
    """`tlcli predict`: one row per file, the top label and the runners-up."""
    models = report["models"]
    # Several names would wrap the title over the narrow table; --json lists them.
    title = f"predictions ({models[0]['name']})"
    if len(models) > 1:
        title = f"predictions (ensemble of {len(models)} checkpoints)"
    table = _grid(shown(title))
    table.add_column("file", overflow="fold")
    table.add_column("label", style="bold")
    table.add_column("prob.", justify="right")
    runners_up = any(len(item["top_k"]) > 1 for item in report["predictions"])  # --top-k 1
    if runners_up:
        # Capped, so the runners-up wrap before a path is folded mid-name.
        table.add_column("next", overflow="fold", max_width=TERMINAL_RUNNERS_UP_WIDTH)
    for item in report["predictions"]:
        rest = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in item["top_k"][1:])
        cells = [shown(item["path"]), shown(item["label"]), f"{item['confidence']:.3f}"]
        table.add_row(*cells, *([shown(rest)] if runners_up else []))
    if report["skipped"]:
        table.caption = f"{len(report['skipped'])} file(s) skipped (listed above)"
    return table


def export_table(result: dict[str, Any]) -> Table:
    """`tlcli export`: where it went, what it expects, and the parity check."""
    table = Table(title=f"export ({result['format']})", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    pre = result["preprocessing"]
    parity = result["parity"]
    table.add_row("model", shown(f"{result['paths']['model']} ({result['bytes'] / 1e6:.1f} MB)"))
    fp32 = result["paths"].get("fp32_model")  # --quantize: the checked model it came from
    if fp32 is not None:
        table.add_row("quantized from", shown(f"{fp32} (fp32, parity-checked below)"))
    table.add_row(
        "preprocessing",
        shown(result["paths"]["sidecar"]) + " and the ONNX metadata"
        if result["format"] == "onnx"
        else shown(result["paths"]["sidecar"]),
    )
    table.add_row(
        "input",
        f"N x {' x '.join(map(str, pre['input_size']))} (dynamic batch); resize "
        f"{pre['resize_shorter_side_to']} {pre['interpolation']}, center crop "
        f"{pre['center_crop']}, mean {shown(str(pre['mean']))}, std {shown(str(pre['std']))}",
    )
    table.add_row("classes", shown(", ".join(result["classes"])))
    if parity["checked"]:
        verdict = "[green]passed[/]" if parity["passed"] else "[red]FAILED[/]"
        table.add_row(
            "parity vs PyTorch",
            f"{verdict}: top-1 agreement {_pct(parity['top1_agreement'])}, max |prob diff| "
            f"{parity['max_abs_prob_diff']:.1e} (tolerance {parity['tolerance']:.0e}), max "
            f"|logit diff| {parity['max_abs_logit_diff']:.1e} (tolerance "
            f"{parity['logit_tolerance']:.0e})",
        )
        table.add_row(
            "checked on",
            f"{parity['images']} images in batches of "
            f"{' and '.join(map(str, parity['batch_sizes']))}: {shown(parity['source'])}",
        )
    else:
        table.add_row("parity vs PyTorch", f"[yellow]not checked[/]: {shown(parity['reason'])}")
    return table


def quantization_table(quantization: dict[str, Any]) -> Table:
    """`tlcli export --quantize`: fp32 and int8 side by side (val top-1, latency, size)."""
    rows = quantization["models"]
    calibration = quantization["calibration"]
    table = _grid(shown(f"{quantization['method']}, fp32 vs int8"))
    for name, justify in [("model", "left"), ("file", "left"), ("size", "right")] + [
        (n, "right") for n in ("val top-1", "agrees w/ fp32", "CPU latency")
    ]:
        table.add_column(name, justify=justify, overflow="fold")
    fp32_bytes = rows[0]["bytes"]
    for row in rows:
        share = "" if row is rows[0] else f" ({100 * row['bytes'] / fp32_bytes:.0f}%)"
        table.add_row(
            row["model"],
            shown(row["file"]),
            f"{row['bytes'] / 1e6:.1f} MB{share}",
            f"{row['val_top1']:.4f}",
            _pct(row["agreement_with_fp32"]),
            f"{row['latency_ms']:.1f} ms",
        )
    table.caption = shown(
        f"val top-1 on {rows[0]['val_images']} val images of the run; latency: "
        f"{rows[0]['latency']}; calibrated on {calibration['images']} of "
        f"{calibration['of']} train images (seed {calibration['seed']}, {calibration['method']})"
    )
    return table


def race_panel_lines(race: dict[str, Any] | None) -> list[str]:
    """recommend --budget race: each plan's val accuracy by rung, the ties, the winner."""
    if not race:
        return []
    lines = [f"[bold]race winner: {race['winner']}[/] (best val: {race['best']})"]
    for plan in race["plans"]:
        rungs = ", ".join(f"{r['val_acc']:.4f} at {r['epochs']} ep" for r in plan["rungs"])
        lines.append(f"  {plan['name']}: {rungs or '-'}")
    lines += [f"- {shown(note)}" for note in race["notes"]]
    return lines


def recommendation_panel(result: dict[str, Any]) -> list[Any]:
    """The recommend report: the decision with its reasons, then the measurements."""
    from rich.panel import Panel

    lines = _recommendation_lines(result)
    out: list[Any] = [Panel("\n".join(lines), title="recommendation", title_align="left")]
    out.append(_measurements_table(result))
    if result.get("candidates"):
        out.append(_candidates_table(result["candidates"]))
    return out


def _recommendation_lines(result: dict[str, Any]) -> list[str]:
    """The plan, its settings, the reasons and the finetune command that runs it."""
    rec = result["recommendation"]
    partial = rec["strategy"] == "partial"
    plan = rec["strategy"] + (f" (last {rec['trainable_stages']} stages + head)" if partial else "")
    head_first = rec["head_warmup_epochs"]
    lines = [
        f"[bold]{plan}[/]  -  {rec['size']} data, {rec['similarity']} to the pretraining domain"
    ]
    lines.append(
        f"lr {rec['lr']:g} (head), backbone x{rec['backbone_lr_mult']:g}, {rec['epochs']} epochs, "
        f"augment {rec['augment']}"
        + (f", head first for {head_first} epoch(s)" if head_first else "")
    )
    if rec.get("expected_head_only"):
        lo, hi = rec["expected_head_only"]
        lines.append(
            f"probe estimate of head-only: {lo:.2f}-{hi:.2f} (95% interval on the sample; a "
            "rough guide, see docs/benchmarks.md)"
        )
    lines += [f"- {shown(reason)}" for reason in rec["reasons"]]
    lines += race_panel_lines(result.get("race"))
    command = f"tlcli finetune {result['data_dir']} --model {result['model']} " + (
        f"--strategy {rec['strategy']}"
        + (f" --trainable-stages {rec['trainable_stages']}" if partial else "")
        + f" --epochs {rec['epochs']} --augment {rec['augment']}"
        + (f" --set strategy.head_warmup_epochs={head_first}" if head_first else "")
    )
    lines.append(f"[dim]{shown(command)}[/]")
    return lines


def _measurements_table(result: dict[str, Any]) -> Table:
    size, sim, dup = result["size"], result["similarity"], result["duplicates"]
    table = Table(title="measurements", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "images",
        f"{size['num_train']} train, {size['num_val']} val, "
        f"{size['num_test']} test, {size['skipped']} skipped",
    )
    table.add_row(
        "classes",
        f"{size['num_classes']}; per class min {size['per_class_min']}, "
        f"median {size['per_class_median']:g}, max {size['per_class_max']} "
        f"(imbalance x{size['imbalance_ratio']:.1f})",
    )
    w, h = size["image_size_median"]
    table.add_row("image sizes", f"median {w}x{h}; modes {size['modes']}")
    table.add_row(
        "duplicates",
        f"{dup['exact_files']} exact, {dup['near_files']} near "
        f"({dup['near_groups']} groups); {dup['cross_split_groups']} cross the split; "
        f"{dup['label_conflict_groups']} with conflicting labels",
    )
    for group in dup["label_conflict_examples"][:3]:
        table.add_row("", "same picture: " + shown(", ".join(group)))
    _add_probe_rows(table, sim)
    table.add_row(
        "time",
        f"{result['seconds']:.1f}s ({1000 * sim['seconds_per_image']:.0f} ms/image features)",
    )
    return table


def _add_probe_rows(table: Table, sim: dict[str, Any]) -> None:
    """The similarity measurements: probes, LogME, label issues, the original head."""
    table.add_row(
        "linear probe",
        f"{sim['probe_accuracy']:.3f} ({sim['num_sampled']} images, {sim['feature_dim']} features)",
    )
    table.add_row("kNN probe", f"{sim['knn_accuracy']:.3f}")
    table.add_row("LogME", f"{sim['logme']:.3f}")
    if sim.get("label_issues") is not None:
        table.add_row(
            "label issues",
            f"{sim['label_issues']} of {sim['num_sampled']} sampled images look mislabeled "
            f"({sim['label_issues'] / max(sim['num_sampled'], 1):.1%}); "
            "tlcli doctor DATA_DIR lists them all",
        )
    stages = ", ".join(f"{p['stage']} {p['accuracy']:.2f}" for p in sim["stage_probes"])
    table.add_row("stage probes", stages or "-")
    if sim.get("head_confidence"):
        conf = sim["head_confidence"]
        table.add_row(
            "original head",
            f"mean max prob {conf['mean_max_prob']:.2f}, "
            f"normalized entropy {conf['normalized_entropy']:.2f}",
        )


def _candidates_table(candidates: list[dict[str, Any]]) -> Table:
    ranking = Table(title="candidate backbones", title_justify="left")
    for column in ("rank", "model", "LogME", "probe", "kNN", "ms/image"):
        ranking.add_column(column)
    for c in candidates:
        ranking.add_row(
            str(c["rank"]),
            shown(c["model"]),
            f"{c['logme']:.3f}",
            f"{c['probe_accuracy']:.3f}",
            f"{c['knn_accuracy']:.3f}",
            f"{c['ms_per_image']:.0f}",
        )
    return ranking


def lr_find_table(result: dict[str, Any]) -> Table:
    table = Table(title="LR range test", show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # a long plot path wraps instead of losing its end
    strategy = result["strategy"] + (
        f" ({result['trainable_stages']} stages, backbone x{result['backbone_lr_mult']:g})"
        if result["strategy"] != "head-only"
        else ""
    )
    rows = [
        ("suggested lr", f"{result['valley']:.2e} (valley of the smoothed loss)"),
        ("steepest descent", f"{result['steepest']:.2e}"),
        ("configured optim.lr", f"{result['configured_lr']:.2e}"),
        ("strategy", strategy),
        ("optimizer", result["optimizer"]),
        ("steps", f"{result['steps']} of {result['num_iter']} ({result['stop_reason']})"),
        ("time", f"{result['seconds']:.1f}s"),
        ("plot", shown(result.get("plot", "-"))),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def _param_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if 1e-2 <= abs(value) < 1e3 or value == 0 else f"{value:.2e}"
    return shown(value)


# Short column headers for the searched parameters: the table has one column per parameter.
TUNE_PARAM_HEADERS = {
    "backbone_lr_mult": "bb lr x",
    "weight_decay": "wd",
    "optimizer": "opt",
    "label_smoothing": "smooth",
    "trainable_stages": "stages",
    "drop_path_rate": "drop path",
}


def tune_trials_table(rows: list[dict[str, Any]], best: int | None) -> Table:
    """One row per trial: state, val accuracy (pruned: at its last epoch), val loss (breaks
    accuracy ties for the best, *), epochs, params."""
    names = sorted({name for r in rows for name in r["params"]})
    table = Table(title="tune trials", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("#", "state", "val acc", "val loss", "epochs", "seconds"):
        table.add_column(column, justify="left" if column == "state" else "right", no_wrap=True)
    for name in names:
        table.add_column(TUNE_PARAM_HEADERS.get(name, name), justify="right", no_wrap=True)
    state_style = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan"}
    for r in rows:
        style = "bold" if r["number"] == best else ""
        table.add_row(
            f"{r['number']}{' *' if r['number'] == best else ''}",
            f"[{state_style.get(r['state'], '')}]{r['state'].lower()}[/]",
            _fmt(r["value"], ".4f"),
            _fmt(r.get("val_loss"), ".4f"),
            str(r["epochs_run"]),
            _fmt(r["seconds"], ".0f"),
            *(_param_text(r["params"][n]) if n in r["params"] else "-" for n in names),
            style=style,
        )
    return table


DOCTOR_TABLE_ROWS = 5  # ambiguous, outliers and clusters shown; --json and issues.csv list all


def doctor_tables(result: dict[str, Any], top: int) -> list[Table]:
    """`tlcli doctor`: the summary, then the flagged images, most likely first."""
    tables = [_doctor_summary(result), _label_issues_table(result["label_issues"], top)]
    for key, title, score in (
        ("ambiguous", "ambiguous (closest two classes first)", "margin"),
        ("outliers", "outliers (most unusual first)", "kNN dist."),
    ):
        if result[key]:
            tables.append(_flagged_table(result[key], title, score))
    if result["near_duplicates"]:
        tables.append(_near_duplicates_table(result["near_duplicates"]))
    return tables


def _doctor_summary(result: dict[str, Any]) -> Table:
    import statistics

    acc = result["fold_accuracy"]
    spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
    summary = Table(title="doctor", show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    files = result.get("files", {})
    rows = [
        (
            "data",
            f"{result['data']} ({result['num_images']} images, {result['num_skipped']} "
            f"skipped, {len(result['classes'])} classes)",
        ),
        (
            "out-of-fold heads",
            f"{result['folds']} folds, L-BFGS, weight decay "
            f"{result['weight_decay']:.0e}: accuracy {result['out_of_fold_accuracy']:.4f} "
            f"(folds {min(acc):.3f}-{max(acc):.3f}, sd {spread:.3f})",
        ),
        ("label issues", f"{len(result['label_issues'])} (cleanlab confident learning)"),
        ("ambiguous", f"{len(result['ambiguous'])} (two classes within 0.1)"),
        ("outliers", f"{len(result['outliers'])} (far from their nearest neighbours)"),
        (
            "near-duplicates",
            f"{len(result['near_duplicates'])} clusters, "
            f"{sum(1 for c in result['near_duplicates'] if len(c['labels']) > 1)} with "
            "conflicting labels",
        ),
        ("time", f"{result['seconds']:.1f}s"),
    ]
    rows += [(name.replace("_", " "), path) for name, path in files.items()]
    for key, value in rows:
        summary.add_row(key, shown(value))
    return summary


def _label_issues_table(label_issues: list[dict[str, Any]], top: int) -> Table:
    n_issues = len(label_issues)
    issues = _grid(f"likely label issues, most likely first ({min(top, n_issues)} of {n_issues})")
    columns = ("#", "file", "given", "suggested", "p(given)", "p(sugg.)")
    for name in columns:
        justify = "right" if name.startswith(("#", "p(")) else "left"
        issues.add_column(name, justify=justify)
    for rank, item in enumerate(label_issues[:top], start=1):
        issues.add_row(
            str(rank),
            shown(item["path"]),
            shown(item["given_label"]),
            shown(item["suggested_label"]),
            f"{item['given_prob']:.3f}",
            f"{item['suggested_prob']:.3f}",
        )
    return issues


def _flagged_table(items: list[dict[str, Any]], title: str, score: str) -> Table:
    """Ambiguous images or outliers, with the score that flagged them."""
    table = _grid(f"{title}, {min(DOCTOR_TABLE_ROWS, len(items))} of {len(items)}")
    for name in ("file", "given", "suggested", score):
        table.add_column(name, justify="right" if name == score else "left")
    for item in items[:DOCTOR_TABLE_ROWS]:
        table.add_row(
            shown(item["path"]),
            shown(item["given_label"]),
            shown(item["suggested_label"]),
            f"{item['score']:.3f}",
        )
    return table


def _near_duplicates_table(near_duplicates: list[dict[str, Any]]) -> Table:
    clusters = sorted(near_duplicates, key=lambda c: (-len(c["labels"]), -len(c["paths"])))
    n_shown = min(DOCTOR_TABLE_ROWS, len(clusters))
    table = _grid(f"near-duplicate clusters, {n_shown} of {len(clusters)} (conflicting first)")
    for name in ("files", "labels", "splits"):
        table.add_column(name)
    for cluster in clusters[:DOCTOR_TABLE_ROWS]:
        table.add_row(
            shown(", ".join(cluster["paths"])),
            shown(", ".join(cluster["labels"])),
            ", ".join(cluster["splits"]),
        )
    return table
