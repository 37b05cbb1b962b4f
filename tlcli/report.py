"""report.html: one self-contained page per report dir (evaluate) or run dir (finetune).

Built only from the files the folder already holds (report.json, or summary.json, config.yaml
and curves.png), so `tlcli report DIR` rebuilds it at any time. Everything is inline: the
figures as data: URIs or SVG, the CSS, a few lines of JS to sort tables; nothing is fetched.
Every name that came from a user (classes, files, folders) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tlcli.atomic import write_text_atomically
from tlcli.errors import RunDirError, printable

REPORT_FILE = "report.html"
EVALUATE_INPUT = "report.json"  # written by evaluate --report-dir
FINETUNE_INPUT = "summary.json"  # written at the end of every finetune run
DOCTOR_INPUT = "doctor.json"  # optional: a future `doctor` command's flags
# Most confident errors shown with a thumbnail: the likeliest label errors, one screenful.
GALLERY_SIZE = 24
THUMBNAIL_PX = 112  # longest side; JPEG keeps 24 of them around 100 KB
THUMBNAIL_QUALITY = 80
# Confusion-matrix cells are shaded by row fraction in this many steps (CSS classes c0..c9).
CM_SHADES = 10
# The update/weight ratio rule of thumb (tlcli.train.monitor): ~1e-3, a decade either side.
RATIO_TARGET, RATIO_LOW, RATIO_HIGH = 1e-3, 1e-4, 1e-2
# As the loop's warning: a new head starts near zero, so its first epochs' ratio runs high.
HEAD_RATIO_GRACE_EPOCHS = 2

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;
padding:16px 24px;color:#1d232a;background:#fff}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde
;padding-bottom:4px}.sub{color:#5a6470;margin:0 0 12px}
table{border-collapse:collapse;margin:6px 0}th,td{padding:3px 9px;border-bottom:1px solid #e7eaee;
text-align:left}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f3f5f7;font-weight:600}table.sortable th{cursor:pointer;user-select:none}
table.sortable th:after{content:" \\2195";color:#9aa3ad;font-size:11px}
table.kv th{background:none;width:210px}.scroll table.sortable thead th{position:sticky;top:0}
.scroll{display:inline-block;overflow:auto;max-height:640px;max-width:100%;border:1px solid #dde}
.cm{font-size:12px}.cm td,.cm th{padding:2px 5px;border:1px solid #eef0f2;text-align:right}
.cm thead th{position:sticky;top:0;z-index:1;writing-mode:vertical-rl;transform:rotate(180deg);
text-align:left;max-height:140px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.cm th.row{position:sticky;left:0;text-align:left;white-space:nowrap;max-width:220px;
overflow:hidden;text-overflow:ellipsis;z-index:1}.cm thead th.corner{z-index:2;writing-mode:
horizontal-tb;transform:none;left:0}.cm td.d{font-weight:700;outline:1px solid #1d232a}
.c0{background:#fff}.c1{background:#eef4fb}.c2{background:#dce9f6}.c3{background:#c6dbef}
.c4{background:#a8cce4}.c5{background:#85b9dc;color:#fff}.c6{background:#5fa2d0;color:#fff}
.c7{background:#3d87c0;color:#fff}.c8{background:#2468a8;color:#fff}.c9{background:#0b4a8a;
color:#fff}.gallery{display:flex;flex-wrap:wrap;gap:10px}.gallery figure{margin:0;width:150px;
font-size:12px;border:1px solid #e1e4e8;padding:6px;border-radius:4px}.gallery img{display:block;
max-width:138px;max-height:138px;margin:0 auto 4px}.gallery .missing{height:80px;display:flex;
align-items:center;justify-content:center;background:#f3f5f7;color:#8a939c}.bad{color:#b42318}
.ok{color:#067647}.warn{color:#b54708}.path{color:#5a6470;word-break:break-all}
.figs{display:flex;flex-wrap:wrap;gap:24px}img.plot{max-width:100%}ul{margin:4px 0 8px 20px;
padding:0}code{background:#f3f5f7;padding:1px 4px;border-radius:3px}
"""

# Click a header to sort by it (numbers by data-v, else text); click again to reverse. Also
# sets data-images on <html> once every image has loaded: the browser test waits for it.
JS = """
document.querySelectorAll("table.sortable").forEach(function(t){
 t.querySelectorAll("thead th").forEach(function(th,i){th.addEventListener("click",function(){
  var b=t.tBodies[0],rows=Array.from(b.rows),asc=th.dataset.dir!=="asc";
  th.dataset.dir=asc?"asc":"desc";
  function key(r){var c=r.cells[i],v=c.dataset.v;return v!==undefined?parseFloat(v):c.textContent;}
  rows.sort(function(x,y){var a=key(x),c=key(y);var r=(typeof a==="number"&&typeof c==="number")?
   a-c:String(a).localeCompare(String(c));return asc?r:-r;});
  rows.forEach(function(r){b.appendChild(r);});});});});
function imagesDone(){var im=Array.from(document.images);
 var ok=im.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;
 document.documentElement.dataset.images=ok+"/"+im.length;}
window.addEventListener("load",imagesDone);
"""


def esc(value: Any) -> str:
    """HTML-escaped text (quotes too: names end up in attributes as well), with control
    characters and undecodable bytes spelled out as every other printer shows them."""
    return html.escape(printable(value), quote=True)


def fmt(value: Any, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def cell(text: Any, sort_value: float | None = None, cls: str = "") -> str:
    """A table cell; numeric cells carry their value for sorting."""
    attrs = f' class="{cls}"' if cls else ""
    if sort_value is not None and math.isfinite(sort_value):
        attrs += f' data-v="{sort_value!r}"'
    return f"<td{attrs}>{esc(text)}</td>"


def num(value: float | None, spec: str = ".4f") -> str:
    return cell(fmt(value, spec), value, "n")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], sortable: bool = False) -> str:
    """rows: lists of already-rendered <td> cells (see `cell`, `num`)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    cls = ' class="sortable"' if sortable else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def key_values(pairs: Sequence[tuple[str, str]]) -> str:
    """A two-column table; values are already-escaped HTML."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


def section(title: str, body: str, note: str = "") -> str:
    extra = f'<p class="sub">{note}</p>' if note else ""
    return f"<section><h2>{esc(title)}</h2>{extra}{body}</section>"


def page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        # No network at all: a report opened anywhere shows the same page.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{esc(title)}</h1><p class="sub">{subtitle}</p>'
        + "".join(sections)
        + f"<script>{JS}</script></body></html>"
    )


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_uri(path: Path) -> str | None:
    path = Path(path)
    return data_uri(path.read_bytes(), "image/png") if path.is_file() else None


def thumbnail_uri(path: str | Path) -> str | None:
    """A small JPEG of an image file, or None when it cannot be read any more."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))  # JPEG: decode at reduced size
            thumb = img.convert("RGB")
            thumb.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    buffer = io.BytesIO()
    thumb.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
    return data_uri(buffer.getvalue(), "image/jpeg")


# ---------------------------------------------------------------------------------------------
# figures drawn as inline SVG from the JSON


def reliability_svg(bins: Sequence[dict[str, Any]], ece: float | None, title: str) -> str:
    """Accuracy per confidence bin against the diagonal, bin counts underneath (inline SVG)."""
    side, pad, hist = 260, 34, 50
    total_h = side + hist + 2 * pad + 14
    top = pad
    most = max([b["count"] for b in bins] + [1])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{side + 2 * pad}" height="{total_h}" '
        f'role="img" aria-label="{esc(title)}" font-size="11" font-family="sans-serif">',
        f'<text x="{pad}" y="16" font-size="13" font-weight="600">{esc(title)}'
        f"{'' if ece is None else f' (ECE {ece:.3f})'}</text>",
        f'<rect x="{pad}" y="{top}" width="{side}" height="{side}" fill="#fafbfc" '
        'stroke="#9aa3ad"/>',
    ]
    for b in bins:
        x = pad + b["lo"] * side
        w = (b["hi"] - b["lo"]) * side
        if b["count"]:
            acc, conf = b["accuracy"] or 0.0, b["confidence"] or 0.0
            y = top + (1 - acc) * side
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{acc * side:.1f}" '
                f'fill="#2f7fc1" stroke="#1d232a" stroke-width="0.5"/>'
            )
            lo, hi = sorted((acc, conf))
            parts.append(
                f'<rect x="{x:.1f}" y="{top + (1 - hi) * side:.1f}" width="{w:.1f}" '
                f'height="{(hi - lo) * side:.1f}" fill="#d92d20" fill-opacity="0.3"/>'
            )
        h = b["count"] / most * hist
        parts.append(
            f'<rect x="{x:.1f}" y="{top + side + 8 + hist - h:.1f}" width="{w:.1f}" '
            f'height="{h:.1f}" fill="#8a939c"/>'
        )
    parts += [
        f'<line x1="{pad}" y1="{top + side}" x2="{pad + side}" y2="{top}" stroke="#5a6470" '
        'stroke-dasharray="4 3"/>',
        f'<text x="{pad + side / 2}" y="{total_h - 6}" text-anchor="middle">confidence '
        "(max probability); grey: images per bin</text>",
        f'<text x="10" y="{top + side / 2}" transform="rotate(-90 10 {top + side / 2})" '
        'text-anchor="middle">accuracy</text>',
    ]
    for t in (0, 0.5, 1):
        parts.append(f'<text x="{pad - 4}" y="{top + (1 - t) * side + 4}" text-anchor="end">{t:g}')
        parts.append("</text>")
    return "".join(parts) + "</svg>"


def calibration_views(detail: dict[str, Any]) -> list[tuple[str, list[dict], float | None]]:
    """(title, reliability bins, ECE) to draw: the probabilities as evaluated, and when the
    checkpoint carries a temperature, before and after it (detail["calibration"])."""
    calibration = detail.get("calibration") or {}
    views = []
    before, after = calibration.get("before") or {}, calibration.get("after") or {}
    if before.get("reliability"):
        views.append(("before calibration", before["reliability"], before.get("ece")))
    if after.get("reliability"):
        t = calibration.get("temperature")
        title = "after calibration" + (f" (T = {t:.2f})" if isinstance(t, float | int) else "")
        views.append((title, after["reliability"], after.get("ece")))
    if not views:
        views.append(("reliability", detail["reliability"], detail.get("ece")))
    return views


def confusion_table(cm: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    """The matrix as an HTML table: sticky headers, cells shaded by row fraction, zeros blank
    (400 classes stay a scrollable table, not a 19,200 px figure)."""
    head = '<th class="corner">true \\ predicted</th>' + "".join(
        f'<th title="{esc(c)}">{esc(c)}</th>' for c in classes
    )
    rows = []
    for i, row in enumerate(cm):
        total = sum(row) or 1
        cells = []
        for j, count in enumerate(row):
            if not count and i != j:
                cells.append("<td></td>")  # most of a 400-class matrix: keep it short
                continue
            shade = min(CM_SHADES - 1, math.ceil(count / total * (CM_SHADES - 1)))
            cls = f"c{shade}" + (" d" if i == j else "")
            cells.append(f'<td class="{cls}">{count or ""}</td>')
        rows.append(
            f'<tr><th class="row" title="{esc(classes[i])}">{esc(classes[i])}</th>'
            + "".join(cells)
            + "</tr>"
        )
    return (
        f'<div class="scroll"><table class="cm"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


# ---------------------------------------------------------------------------------------------
# evaluate


def primary_entry(report: dict[str, Any]) -> dict[str, Any]:
    if report.get("ensemble"):
        return report["ensemble"]
    return next(m for m in report["models"] if m["name"] == report["primary"])


def evaluate_summary(report: dict[str, Any]) -> str:
    entries = [(m["name"], m.get("weights", "-"), m["summary"]) for m in report["models"]]
    if report.get("ensemble"):
        entries.append(("ensemble", "-", report["ensemble"]["summary"]))
    rows = [
        [
            cell(name),
            cell(weights),
            num(s["top1"]),
            cell(f"{s['num_correct']}/{report['num_images']}"),
            num(s.get("top5")),
            num(s["loss"]),
            num(s["balanced_accuracy"]),
            num(s["macro_f1"]),
            num(s["ece"]),
        ]
        for name, weights, s in entries
    ]
    head = key_values(
        [
            ("data", f'<span class="path">{esc(report["data_dir"])}</span>'),
            ("split", esc(report["split"])),
            ("images", f"{report['num_images']} scored, {len(report.get('skipped', []))} skipped"),
            ("classes", str(len(report["classes"]))),
            ("test-time augmentation", esc(report.get("tta") or "none")),
        ]
    )
    models = table(
        ["model", "weights", "top-1", "correct", "top-5", "loss", "bal. acc", "macro F1", "ECE"],
        rows,
    )
    warnings = "".join(f'<li class="warn">{esc(w)}</li>' for w in report.get("warnings", []))
    return head + models + (f"<ul>{warnings}</ul>" if warnings else "")


def per_class_table(detail: dict[str, Any]) -> str:
    rows = [
        [
            cell(r["class"]),
            num(r["precision"]),
            num(r["recall"]),
            num(r["f1"]),
            num(r["support"], "d"),
        ]
        for r in detail["per_class"]
    ]
    body = table(["class", "precision", "recall", "F1", "support"], rows, sortable=True)
    return f'<div class="scroll">{body}</div>'  # 400 classes: a scrolling list


def gallery(errors: Sequence[dict[str, Any]], thumbnails: dict[str, str | None]) -> str:
    figures = []
    for item in errors:
        uri = thumbnails.get(item["path"])
        name = Path(item["path"]).name
        image = (
            f'<img src="{uri}" alt="{esc(name)}">'
            if uri
            else '<div class="missing">file not found</div>'
        )
        figures.append(
            f'<figure title="{esc(item["path"])}">{image}<div>given <b>{esc(item["true"])}</b>'
            f'</div><div class="bad">predicted <b>{esc(item["predicted"])}</b> '
            f'{item["confidence"]:.3f}</div><div class="path">{esc(name)}</div></figure>'
        )
    return f'<div class="gallery">{"".join(figures)}</div>'


def doctor_section(doctor: dict[str, Any] | None) -> str:
    """The doctor's flags, when a doctor.json lies beside the report: one row per flag."""
    if not doctor:
        return ""
    flags = doctor.get("flags") or []
    if not flags:
        return section("data doctor", "<p>no flags</p>")
    keys = list(dict.fromkeys(k for f in flags for k in f))
    rows = [[cell(f.get(k, "")) for k in keys] for f in flags]
    return section("data doctor", table(keys, rows, sortable=True))


def evaluate_report_html(
    report: dict[str, Any],
    thumbnails: dict[str, str | None],
    doctor: dict[str, Any] | None = None,
) -> str:
    """The evaluate page from report.json (thumbnails: path -> data URI or None)."""
    entry = primary_entry(report)
    detail = entry["report"]
    classes = report["classes"]
    views = calibration_views(detail)
    figures = "".join(reliability_svg(bins, ece, title) for title, bins, ece in views)
    mean_conf = sum((b["confidence"] or 0) * b["count"] for b in detail["reliability"])
    mean_conf /= max(detail["n"], 1)
    errors = detail["misclassified"][:GALLERY_SIZE]
    confused = [
        [cell(p["true"]), cell(p["predicted"]), num(p["count"], "d")]
        for p in detail["most_confused"]
    ]
    sections = [
        section("summary", evaluate_summary(report)),
        section(
            f"per class ({report['primary']})",
            per_class_table(detail),
            f"macro F1 {detail['macro_f1']:.4f}, weighted F1 {detail['weighted_f1']:.4f}; "
            "click a header to sort",
        ),
        section(
            "confusion matrix",
            confusion_table(detail["confusion_matrix"], classes),
            "rows: true class, columns: predicted; shade: fraction of the true class",
        ),
    ]
    if confused:
        sections.append(
            section("most confused pairs", table(["true", "predicted as", "count"], confused))
        )
    sections.append(
        section(
            "calibration",
            f'<div class="figs">{figures}</div>',
            f"mean confidence {mean_conf:.4f} vs accuracy {detail['top1']:.4f}; bars under the "
            "diagonal: over-confident",
        )
    )
    wrong = len(detail["misclassified"])
    sections.append(
        section(
            f"most confident errors ({len(errors)} of {wrong})",
            gallery(errors, thumbnails) if errors else "<p>no errors</p>",
            "the likeliest label errors to check first",
        )
    )
    sections.append(doctor_section(doctor))
    models = ", ".join(m["name"] for m in report["models"])
    return page(
        f"tlcli evaluate: {report['primary']}",
        f"{esc(models)} on {esc(report['split'])} ({report['num_images']} images)",
        sections,
    )


def write_evaluate_report(directory: Path) -> Path:
    directory = Path(directory)
    report = json.loads((directory / EVALUATE_INPUT).read_text())
    errors = primary_entry(report)["report"]["misclassified"][:GALLERY_SIZE]
    thumbnails = {e["path"]: thumbnail_uri(e["path"]) for e in errors if e.get("path")}
    doctor_path = directory / DOCTOR_INPUT
    doctor = json.loads(doctor_path.read_text()) if doctor_path.is_file() else None
    out = directory / REPORT_FILE
    write_text_atomically(out, evaluate_report_html(report, thumbnails, doctor))
    return out


# ---------------------------------------------------------------------------------------------
# finetune


def plan_section(summary: dict[str, Any]) -> str:
    strategy = summary["strategy"]
    if strategy == "partial":
        strategy += f" (last {summary['trainable_stages']} stages + head)"
    pairs = [
        ("strategy", f"<b>{esc(strategy)}</b>"),
        ("model", esc(summary["model"])),
        ("trainable params", f"{summary['trainable_params']:,} of {summary['total_params']:,}"),
        (
            "images",
            f"{summary['num_train']} train, {summary['num_val']} val, "
            f"{len(summary.get('skipped', []))} skipped",
        ),
        ("device", f"{esc(summary['device'])} x {summary.get('world_size', 1)}"),
    ]
    reasons = summary.get("strategy_reasons") or []
    body = key_values(pairs)
    if reasons:
        body += "<p>why this strategy (measured by recommend):</p><ul>"
        body += "".join(f"<li>{esc(r)}</li>" for r in reasons) + "</ul>"
    else:
        body += '<p class="sub">strategy chosen on the command line or config (no measurement)</p>'
    stages = (summary.get("plan") or {}).get("stages") or []
    if stages:
        rows = [
            [
                cell(s["name"]),
                cell("trains" if s["trainable"] else "frozen", cls="ok" if s["trainable"] else ""),
                num(s["lr_mult"], "g") if s["trainable"] else cell("-"),
                num(s["num_params"], ",d"),
            ]
            for s in stages
        ]
        body += table(["stage", "", "lr x", "params"], rows)
    return section("plan", body)


def baseline_section(summary: dict[str, Any]) -> str:
    """The linear-probe baseline and what fine-tuning added (when the run measured one)."""
    probe = summary.get("probe_val_acc")
    if probe is None:
        return ""
    gain = summary.get("gain_over_probe")
    if gain is None:
        gain = summary["val_acc"] - probe
    verdict = "ok" if gain > 0 else "bad"
    body = key_values(
        [
            ("linear probe (epoch 0)", f"{probe:.4f}"),
            ("fine-tuned (best)", f"{summary['val_acc']:.4f}"),
            ("gain over the probe", f'<span class="{verdict}">{gain:+.4f}</span>'),
        ]
    )
    return section("baseline: linear probe vs fine-tuning", body)


def ratio_verdict(value: float | None, judged: bool = True) -> tuple[str, str]:
    if value is None:
        return "-", ""
    if not judged:
        return f"{value:.1e}", ""
    if value < RATIO_LOW:
        return f"{value:.1e} low", "warn"
    if value > RATIO_HIGH:
        return f"{value:.1e} high", "bad"
    return f"{value:.1e}", "ok"


def epochs_table(history: Sequence[dict[str, Any]], best_epoch: int) -> str:
    has_ema = any(r.get("ema_val_acc") is not None for r in history)
    headers = ["epoch", "train loss", "train acc", "val loss", "val acc"]
    headers += ["EMA val acc"] if has_ema else []
    headers += ["lr", "upd/w head", "upd/w backbone", "seconds"]
    rows = []
    for r in history:
        epoch = r["epoch"]
        label = (
            f"{epoch}" + (" (probe)" if epoch == 0 else "") + (" *" if epoch == best_epoch else "")
        )
        head, head_cls = ratio_verdict(r.get("update_ratio"), epoch > HEAD_RATIO_GRACE_EPOCHS)
        back, back_cls = ratio_verdict(r.get("backbone_update_ratio"))
        rows.append(
            [
                cell(label, epoch),
                num(r.get("train_loss")),
                num(r.get("train_acc")),
                num(r.get("val_loss")),
                num(r.get("val_acc")),
                *([num(r.get("ema_val_acc"))] if has_ema else []),
                num(r.get("lr"), ".2e"),
                cell(head, r.get("update_ratio"), f"n {head_cls}"),
                cell(back, r.get("backbone_update_ratio"), f"n {back_cls}"),
                num(r.get("seconds"), ".1f"),
            ]
        )
    return table(headers, rows, sortable=True)


def health_section(history: Sequence[dict[str, Any]]) -> str:
    """The lecture's update/weight check: ~1e-3 per step is a healthy learning rate."""
    heads = [r["update_ratio"] for r in history if r.get("update_ratio") is not None]
    judged = [
        r["update_ratio"]
        for r in history
        if r.get("update_ratio") is not None and r["epoch"] > HEAD_RATIO_GRACE_EPOCHS
    ]
    backs = [
        r["backbone_update_ratio"] for r in history if r.get("backbone_update_ratio") is not None
    ]
    if not heads and not backs:
        return section(
            "update/weight ratio",
            '<p class="sub">not measured: the head was fit in one pass (L-BFGS), not by '
            "optimizer steps</p>",
        )
    lines = []
    for name, values in (("head", heads), ("pretrained layers", backs)):
        if not values:
            continue
        low, high = min(values), max(values)
        cls = ""
        if name == "head" and not judged:
            hint = (
                f" (not judged in the first {HEAD_RATIO_GRACE_EPOCHS} epochs: a new head starts "
                "near zero, so its ratio starts high)"
            )
        elif name == "head":
            ok = RATIO_LOW <= judged[-1] <= RATIO_HIGH
            cls = "ok" if ok else "bad"
            hint = "" if ok else " (outside 1e-4..1e-2: the learning rate may be off)"
        else:
            ok = high <= RATIO_HIGH
            cls = "ok" if ok else "bad"
            hint = "" if ok else " (above 1e-2: they move like a from-scratch model)"
        lines.append(
            f'<li class="{cls}">{name}: {low:.1e} .. {high:.1e}, last {values[-1]:.1e}{hint}</li>'
        )
    return section(
        "update/weight ratio",
        f"<ul>{''.join(lines)}</ul>",
        f"median per epoch of |update| / |weight| per step; the rule of thumb is ~{RATIO_TARGET:g}",
    )


def finetune_report_html(summary: dict[str, Any], curves: str | None) -> str:
    """The finetune page from summary.json (curves: curves.png as a data URI, or None)."""
    history = summary.get("history") or []
    weights = summary.get("best_weights", "raw")
    result = key_values(
        [
            (
                "val accuracy",
                f"<b>{summary['val_acc']:.4f}</b> (epoch {summary['best_epoch']}, "
                f"{esc(weights)} weights)",
            ),
            (
                "epochs",
                f"{summary['epochs_run']}"
                + (" (stopped early)" if summary.get("stopped_early") else ""),
            ),
            ("time", f"{summary['seconds']:.1f}s"),
            ("best checkpoint", f'<span class="path">{esc(summary["paths"]["best"])}</span>'),
            ("data", f'<span class="path">{esc(summary["data_dir"])}</span>'),
        ]
    )
    image = f'<img class="plot" src="{curves}" alt="training curves">' if curves else "<p>-</p>"
    if len(history) < 2:  # one point per panel says nothing the table below does not
        image = '<p class="sub">one epoch: no curves (the table below has its numbers)</p>'

    sections = [
        section("result", result),
        plan_section(summary),
        baseline_section(summary),
        section("curves", image),
        section("epochs", epochs_table(history, summary["best_epoch"]), "*: the best epoch"),
        health_section(history),
    ]
    return page(
        f"tlcli finetune: {Path(summary['run_dir']).name}",
        f"{len(summary['classes'])} classes: {esc(', '.join(summary['classes']))}",
        sections,
    )


def write_finetune_report(directory: Path) -> Path:
    directory = Path(directory)
    summary = json.loads((directory / FINETUNE_INPUT).read_text())
    out = directory / REPORT_FILE
    write_text_atomically(out, finetune_report_html(summary, png_uri(directory / "curves.png")))
    return out


def write_report(directory: Path) -> Path:
    """(Re)build DIR/report.html from an evaluate report dir or a finetune run dir."""
    directory = Path(directory)
    if (directory / EVALUATE_INPUT).is_file():
        return write_evaluate_report(directory)
    if (directory / FINETUNE_INPUT).is_file():
        return write_finetune_report(directory)
    raise RunDirError(
        f"{directory} holds neither {EVALUATE_INPUT} nor {FINETUNE_INPUT}; pass a finetune run "
        "dir or an evaluate --report-dir folder"
    )
