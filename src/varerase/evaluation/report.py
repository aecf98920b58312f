"""``report.html`` rebuilt from a saved evaluation run (``metrics.json`` + PNG grids).

The page is self-contained (grids and plots embedded as base64 PNGs) and has: the presence
table (per group and concept, before/after with 95 % Wilson intervals and image counts, and
erasure when the run compared two models), the preservation table (prompt following with its
interval, CLIP score, feature diversity, FID/KID against the before-images and against ground
truth, each with its number of images; KID (unscaled) ± std; FID left out below ``MIN_FID_IMAGES``
images a side, where it is mostly bias), two plots
(presence per concept; preservation per group, saved beside the page under ``plots/``), the
image grids (before and after side by side) and every setting the run recorded.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from varerase.errors import DataError
from varerase.evaluation.metrics import MIN_FID_IMAGES
from varerase.io import atomic_write_bytes, atomic_write_text

SECTIONS = ("before", "after", "model")  # the order sections are shown in

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.key, th.key { text-align: left; }
.grids { display: flex; gap: 1.5em; flex-wrap: wrap; align-items: flex-start; }
figure { margin: 0; } figcaption { font-weight: bold; margin-bottom: 0.3em; }
img { image-rendering: pixelated; max-width: 100%; }
"""


def _load(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; run an evaluation into {run_dir} first") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from error


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _interval(summary: dict | None) -> str:
    """``[lo–hi %] of n`` for a rate summary with a 95 % interval (files written before intervals: –)."""
    if not summary or summary.get("ci95") is None:
        return "–"
    lo, hi = summary["ci95"]
    return f"[{100 * lo:.1f}–{100 * hi:.1f}%] of {summary['n']}"


def _fid(d: dict) -> str:
    if d.get("fid") is None:
        return "–"
    return _number(d["fid"]) if d.get("fid_reliable", True) else f"– (< {MIN_FID_IMAGES} images)"


def _kid(d: dict) -> str:
    if d.get("kid_mean") is None:
        return "–"
    std = "–" if d.get("kid_std") is None else _number(d["kid_std"], 2)
    return f"{_number(d['kid_mean'], 2)} ± {std}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f'<th class="key">{html.escape(h)}</th>' if i == 0 else f"<th>{html.escape(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="key">{html.escape(c)}</td>' if i == 0 else f"<td>{html.escape(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{html.escape(alt)}">'


def _flatten(settings: dict, prefix: str = "") -> list[list[str]]:
    rows = []
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append([f"{prefix}{key}", value if isinstance(value, str) else json.dumps(value)])
    return rows


def _presence_rows(metrics: dict, sections: list[str]) -> list[list[str]]:
    rows = []
    for group in metrics[sections[0]]["groups"]:
        for concept in metrics["settings"]["concepts"]:
            row = [f"{group} / {concept}"]
            for s in sections:
                g = metrics[s]["groups"][group]
                row += [_percent(g["presence"][concept]), _interval(g.get("presence_intervals", {}).get(concept))]
            if "comparison" in metrics:
                row.append(_percent(metrics["comparison"][group]["erasure"][concept]["erasure"]))
            rows.append(row)
    return rows


def _preservation(group: dict) -> float | None:
    """The preservation number plotted per group: prompt following, else CLIP score (as a fraction)."""
    if "prompt_following" in group:
        return group["prompt_following"]["accuracy"]
    if "clip_score" in group:
        return group["clip_score"]["clip_score"] / 100.0
    return None


def _preservation_rows(metrics: dict, sections: list[str]) -> tuple[list[str], list[list[str]]]:
    space = f"{(metrics['settings'].get('feature_space') or {}).get('extractor', 'detector')} features"
    groups = metrics[sections[0]]["groups"]
    to_truth = any("distances_to_truth" in metrics[s]["groups"][g] for s in sections for g in groups)
    kept = any("cooccurrence_kept" in metrics[s]["groups"][g] for s in sections for g in groups)
    header = ["group"]
    for s in sections:
        header += [f"prompt following ({s})", f"95 % interval ({s})", f"CLIP score ({s})", f"feature diversity ({s})"]
        if kept:
            header += [f"co-occurrence kept ({s})", f"95 % interval ({s})"]
        if to_truth:
            header += [f"FID vs truth ({s}, {space})", f"KID vs truth ({s}, {space}, unscaled)", f"images vs truth ({s})"]
    comparison = metrics.get("comparison", {})
    compared = any("distances" in c for c in comparison.values())
    if compared:
        header += [f"FID (after vs before, {space})", f"KID (after vs before, {space}, unscaled)", "images a side"]
    rows = []
    for group in groups:
        row = [group]
        for s in sections:
            g = metrics[s]["groups"][group]
            row += [
                _percent(g["prompt_following"]["accuracy"]) if "prompt_following" in g else "–",
                _interval({"ci95": g["prompt_following"].get("ci95"), "n": g["prompt_following"]["num_images"]}) if "prompt_following" in g else "–",
                f"{_number(g['clip_score']['clip_score'], 2)} (cos {_number(g['clip_score']['cosine'])})" if "clip_score" in g else "–",
                _number(g.get("feature_diversity")),
            ]
            if kept:
                other = g.get("cooccurrence_kept")
                row += [_percent(other["rate"]), _interval(other)] if other else ["–", "–"]
            if to_truth:
                d = g.get("distances_to_truth", {})
                row += [_fid(d), _kid(d), str(d.get("num_fake", "–"))]
        if compared:
            d = comparison.get(group, {}).get("distances", {})
            row += [_fid(d), _kid(d), str(d.get("num_fake", "–"))]
        rows.append(row)
    return header, rows


def _paraphrase_filter(settings: dict) -> str:
    """The paraphrase filter's candidates (original model's presence, kept or not), if the run had one."""
    record = settings.get("paraphrase_filter")
    if not record:
        return ""
    config = record["config"]
    verdicts = {(True, True): "kept, in the group", (True, False): "kept, left out (max_kept)", (False, False): "dropped"}
    rows = [[c["prompt"], c["concept"], _percent(c["presence"]), verdicts[c["kept"], c["used"]]] for c in record["candidates"]]
    intro = (
        f"<p>{record['num_kept']} of {record['num_candidates']} candidates kept: presence ≥ {_percent(config['min_presence'])} "
        f"in the original model's images over {config['seeds']} seeds from {config['first_seed']} (disjoint from the evaluation's); "
        f"{record['num_used']} of them, evenly spaced, form the group.</p>"
    )
    return f"<h2>Paraphrase filter</h2>{intro}{_table(['prompt', 'concept', 'presence (original)', 'verdict'], rows)}"


def _bar_plot(labels: list[str], series: dict[str, list[float]], ylabel: str, title: str) -> bytes:
    """A grouped bar chart as PNG bytes (Agg canvas; pyplot's global state is not touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(5.0, 0.6 * len(labels) * len(series) + 2), 3.6), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        ax.bar([i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))], values, width, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _plots(metrics: dict, sections: list[str]) -> dict[str, bytes]:
    groups = list(metrics[sections[0]]["groups"])
    concepts = metrics["settings"]["concepts"]
    labels = [f"{g} / {c}" for g in groups for c in concepts]
    presence = {s: [metrics[s]["groups"][g]["presence"][c] for g in groups for c in concepts] for s in sections}
    plots = {"presence": _bar_plot(labels, presence, "presence", "Concept presence per group and concept")}
    preservation = {s: [_preservation(metrics[s]["groups"][g]) for g in groups] for s in sections}
    if all(v is not None for values in preservation.values() for v in values):
        first = metrics[sections[0]]["groups"][groups[0]]
        what = "prompt following" if "prompt_following" in first else "CLIP score / 100"
        plots["preservation"] = _bar_plot(groups, preservation, what, f"Preservation per group ({what})")
    return plots


def _grids(run_dir: Path, metrics: dict, sections: list[str]) -> str:
    parts = []
    for group in metrics[sections[0]]["groups"]:
        figures = []
        for s in sections:
            grid = metrics[s]["groups"][group].get("grid")
            path = run_dir / grid if grid else None
            body = _img(path.read_bytes(), f"{s} {group}") if path and path.is_file() else f"<p>no grid ({html.escape(str(grid))} missing)</p>"
            figures.append(f"<figure><figcaption>{html.escape(s)}</figcaption>{body}</figure>")
        parts.append(f"<h3>{html.escape(group)}</h3><div class=\"grids\">{''.join(figures)}</div>")
    return "".join(parts)


def build_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (and ``run_dir/plots/*.png``) from ``run_dir/metrics.json``
    and its grids; returns the report's path. DataError if the run has no readable metrics."""
    run_dir = Path(run_dir)
    metrics = _load(run_dir)
    sections = [s for s in SECTIONS if s in metrics]
    if not sections or "settings" not in metrics:
        raise DataError(f"{run_dir / 'metrics.json'} has no settings or no 'model'/'before'/'after' section")
    plots = _plots(metrics, sections)
    for name, png in plots.items():
        atomic_write_bytes(png, run_dir / "plots" / f"{name}.png")
    settings: dict[str, Any] = metrics["settings"]
    presence_header = ["group / concept"] + [h for s in sections for h in (f"presence ({s})", f"95 % interval ({s})")]
    if "comparison" in metrics:
        presence_header.append("erasure (before − after)")
    preservation_header, preservation_rows = _preservation_rows(metrics, sections)
    title = "varerase evaluation" + (" — before / after" if "comparison" in metrics else "")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{_STYLE}</style></head>
<body>
<h1>{title}</h1>
<p>Model {html.escape(str(settings.get("model_fingerprint")))}, detector {html.escape(str(settings.get("detector", {}).get("name")))}
(threshold {html.escape(str(settings.get("threshold")))}), {html.escape(str(settings.get("samples_per_prompt")))} samples per prompt,
evaluated {html.escape(str(settings.get("date")))}.</p>
<h2>Concept presence</h2>
{_table(presence_header, _presence_rows(metrics, sections))}
<h2>Preservation</h2>
{_table(preservation_header, preservation_rows)}
<h2>Plots</h2>
{"".join(_img(png, name) for name, png in plots.items())}
<h2>Images</h2>
{_grids(run_dir, metrics, sections)}
{_paraphrase_filter(settings)}
<h2>Settings</h2>
{_table(["setting", "value"], _flatten({k: v for k, v in settings.items() if k != "paraphrase_filter"}))}
</body></html>
"""
    return atomic_write_text(page, run_dir / "report.html")
