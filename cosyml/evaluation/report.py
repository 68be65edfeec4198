"""What an evaluation run leaves behind, written from a :class:`~cosyml.evaluation.suite.SuiteResult`.

In ``<eval_dir>``:

- ``candidates.json``: the interface other stages read (the registry). Shape::

    {"speaker": str, "model_dir": str,
     "candidates": [{"name": str, "llm": "base" | path, "flow": "base" | path, "base": bool,
                     "summary": {"cer", "cer_ci": [lo, hi], "ss", "ss_ci": [lo, hi], "n", "missing", "over_50"},
                     "subsets": {subset: {same keys}}}],
     "failed": [{"name", "llm", "flow", "error"}],          # candidates that could not be evaluated
     "skipped": {"total": int, "by_reason": {reason: int}, "items": [{"subset", "utt", "reason", "detail"}]}}

  ``cer`` is the mean per-utterance error (CER for zh/ja/ko/yue, WER otherwise), a fraction; ``ss`` the
  mean SS_campplus; null where nothing was scored;
- ``metrics.json``: flat numbers per candidate slug for ``dvc metrics diff``;
- ``plots/candidates.csv`` (one line per candidate), ``plots/subsets.csv`` (candidate x subset) and
  ``plots/cer.svg`` / ``plots/ss.svg`` (bar charts that render offline) for ``dvc plots``;
- ``utterances.csv``: every scored row of every candidate (``candidate`` column first); ``summary.json``:
  settings, full per-subset summaries, synthesis failures and cache counts per candidate;
- ``report.html``: one self-contained page (inline CSS and SVG, nothing fetched): the candidate table with
  CIs, bar charts, per-subset numbers, skipped items and, per text, an audio player for the reference and
  for each candidate (relative links to ``<slug>/<subset>/wavs/<utt>.wav``; references are copied to
  ``references/``), and, when given, the data checks (:mod:`cosyml.evaluation.data_checks`: clips set aside
  per reason, with players for mismatched transcripts and speaker outliers, copied to ``data_checks/``;
  their counts are in ``summary.json`` under ``data_checks``).
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from cosyml.evaluation.candidates import slugify
from cosyml.evaluation.data_checks import DataChecks
from cosyml.evaluation.score import ROW_FIELDS, UtteranceScore, summary_dict
from cosyml.evaluation.suite import CandidateResult, MetricSummary, SuiteResult
from cosyml.fileio import write_if_changed

KIT_NOTICE = (
    "These numbers come from the tiny model kit: random weights. They prove that the plumbing works "
    "(synthesis, ASR, scoring, caching, reporting), not voice quality."
)


@dataclasses.dataclass(frozen=True)
class OutputFiles:
    """Paths :func:`write_outputs` wrote."""

    candidates: Path
    metrics: Path
    plots: tuple[Path, ...]
    utterances: Path
    summary: Path
    report: Path
    media: tuple[str, ...] = ()  # audio the report links, relative to the eval folder (posix)


def write_outputs(result: SuiteResult, report_max_utts: int = 4, data_checks: DataChecks | None = None) -> OutputFiles:
    """Write every file listed in the module docstring into ``result.eval_dir``."""
    out = result.eval_dir
    out.mkdir(parents=True, exist_ok=True)
    candidates = _write_json(out / "candidates.json", candidates_dict(result))
    metrics = _write_json(out / "metrics.json", metrics_dict(result))
    plots = write_plots(result, out / "plots")
    utterances = write_all_rows(out / "utterances.csv", result.scored)
    summary_data = suite_summary_dict(result)
    if data_checks is not None:
        summary_data["data_checks"] = data_checks.summary()
    summary = _write_json(out / "summary.json", summary_data)
    report = out / "report.html"
    page = render_html(result, report_max_utts, data_checks)
    write_if_changed(report, page.encode("utf-8"))
    return OutputFiles(candidates, metrics, plots, utterances, summary, report, linked_media(page))


def linked_media(page: str) -> tuple[str, ...]:
    """The relative paths of every audio file ``page`` plays, in page order (what must be stored next to
    the page, under the same relative paths, for its players to work elsewhere, e.g. in MLflow)."""
    found = (unquote(m) for m in re.findall(r'<audio [^>]*src="([^"]+)"', page))
    return tuple(dict.fromkeys(found))


def _write_json(path: Path, data: Any) -> Path:
    """Atomic, and untouched when the content is the same (a rerun served from the cache rewrites nothing)."""
    write_if_changed(path, (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
    return path


def _csv_bytes(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


# ---------------------------------------------------------------------------------------------- json


def skipped_dict(result: SuiteResult) -> dict[str, Any]:
    skipped = result.skipped
    return {
        "total": len(skipped),
        "by_reason": dict(Counter(p.reason for p in skipped)),
        "items": [dataclasses.asdict(p) for p in skipped],
    }


def candidates_dict(result: SuiteResult) -> dict[str, Any]:
    """The ``candidates.json`` object (shape in the module docstring)."""
    return {
        "speaker": result.speaker,
        "model_dir": str(result.model_dir),
        "candidates": [
            {
                "name": c.candidate.name,
                "llm": c.candidate.llm,
                "flow": c.candidate.flow,
                "summary": c.summary.as_dict() if c.summary else None,
                # a subset with nothing scored has no numbers: it is listed under "skipped" instead
                "subsets": {name: s.as_dict() for name, s in c.subsets.items() if s.n > 0},
                "base": c.candidate.is_base,
            }
            for c in result.scored
        ],
        "failed": [
            {"name": c.candidate.name, "llm": c.candidate.llm, "flow": c.candidate.flow, "error": c.error}
            for c in result.candidates
            if not c.ok
        ],
        "skipped": skipped_dict(result),
    }


def _flat(summary: MetricSummary) -> dict[str, Any]:
    d = summary.as_dict()
    lo_hi = {
        f"{k}_{end}": (d[f"{k}_ci"][i] if d[f"{k}_ci"] else None)
        for k in ("cer", "ss")
        for i, end in enumerate(("lo", "hi"))
    }
    return {"cer": d["cer"], "ss": d["ss"], **lo_hi, "n": d["n"], "missing": d["missing"], "over_50": d["over_50"]}


def metrics_dict(result: SuiteResult) -> dict[str, Any]:
    """``metrics.json``, the headline numbers ``dvc metrics show/diff`` prints: ``{slug: {cer, ss}}``,
    ``skipped_items`` and ``failed_candidates`` (two columns per candidate; CIs, counts and subsets are in
    ``candidates.json`` and ``plots/``)."""
    out: dict[str, Any] = {}
    for c in result.scored:
        assert c.summary is not None
        out[c.candidate.slug] = {"cer": c.summary.cer, "ss": c.summary.ss}
    out["skipped_items"] = len(result.skipped)
    out["failed_candidates"] = sum(not c.ok for c in result.candidates)
    return out


def write_plots(result: SuiteResult, folder: Path) -> tuple[Path, ...]:
    """``candidates.csv`` (candidate, cer, cer_lo, cer_hi, ss, ss_lo, ss_hi, n, missing), ``subsets.csv``
    (label = candidate/subset first) for DVC's vega templates, and ``cer.svg`` / ``ss.svg``: the report's
    bar charts as standalone images, which ``dvc plots show`` embeds and any browser renders offline (its
    vega plots load vega from a CDN)."""
    by_candidate = folder / "candidates.csv"
    by_subset = folder / "subsets.csv"
    charts = _charts(result)
    images = []
    for name, svg in charts.items():
        images.append(folder / f"{name}.svg")
        write_if_changed(images[-1], svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1).encode())
    flat = [(c.candidate.slug, _flat(c.summary)) for c in result.scored if c.summary is not None]
    write_if_changed(
        by_candidate,
        _csv_bytes(
            ["candidate", "cer", "cer_lo", "cer_hi", "ss", "ss_lo", "ss_hi", "n", "missing"],
            (
                [slug, *(_num(d[k]) for k in ("cer", "cer_lo", "cer_hi", "ss", "ss_lo", "ss_hi")), d["n"], d["missing"]]
                for slug, d in flat
            ),
        ),
    )
    write_if_changed(
        by_subset,
        _csv_bytes(
            ["label", "candidate", "subset", "cer", "ss", "n", "missing"],
            (
                [f"{c.candidate.slug}/{name}", c.candidate.slug, name, _num(s.cer), _num(s.ss), s.n, s.missing]
                for c in result.scored
                for name, s in c.subsets.items()
            ),
        ),
    )
    for part, history in result.probe_history.items():
        if history:
            images.append(folder / f"probe_{part}.svg")
            write_if_changed(images[-1], probe_curves_svg(part, history).encode("utf-8"))
    return (by_candidate, by_subset, *images)


def _charts(result: SuiteResult) -> dict[str, str]:
    """``{"cer": svg, "ss": svg}``: the candidates' bar charts with CI whiskers ({} when none was scored)."""
    scored = result.scored
    if not scored:
        return {}
    names = [c.candidate.name for c in scored]
    return {
        "cer": bar_chart_svg(
            "CER/WER per candidate",
            names,
            [c.summary.cer if c.summary else None for c in scored],
            [c.summary.cer_ci if c.summary else None for c in scored],
            unit="%",
        ),
        "ss": bar_chart_svg(
            "SS per candidate",
            names,
            [c.summary.ss if c.summary else None for c in scored],
            [c.summary.ss_ci if c.summary else None for c in scored],
            lower_is_better=False,
        ),
    }


def _num(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


def write_all_rows(path: Path, candidates: Sequence[CandidateResult]) -> Path:
    """Every utterance row of every scored candidate, ``candidate`` (slug) first, flags joined with ';'."""
    write_if_changed(
        path,
        _csv_bytes(
            ["candidate", *ROW_FIELDS],
            (
                [c.candidate.slug, *(_cell(getattr(row, name)) for name in ROW_FIELDS)]
                for c in candidates
                for row in (c.report.rows if c.report else [])
            ),
        ),
    )
    return path


def _cell(value: Any) -> Any:
    if isinstance(value, tuple):
        return ";".join(value)
    if isinstance(value, float):
        return _num(value)
    return "" if value is None else value


def suite_summary_dict(result: SuiteResult) -> dict[str, Any]:
    """``summary.json``: what was evaluated and its results; nothing about this execution (cache counts,
    time), so a rerun served from the cache leaves the file as it was."""
    return {
        "speaker": result.speaker,
        "model_dir": str(result.model_dir),
        "tiny_kit": result.tiny_kit,
        "settings": result.settings,
        "skipped": skipped_dict(result),
        "candidates": [
            {
                "name": c.candidate.name,
                "slug": c.candidate.slug,
                "llm": c.candidate.llm,
                "flow": c.candidate.flow,
                "error": c.error,
                "synth_failures": [dataclasses.asdict(f) for f in c.synth_failures],
                "scores": summary_dict(c.report) if c.report else None,
            }
            for c in result.candidates
        ],
    }


# ---------------------------------------------------------------------------------------------- html

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;margin:24px auto;
max-width:1200px;padding:0 16px;color:#1d2330;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde2ea;
padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
.meta{color:#5a6475;font-size:12.5px}.notice{background:#fff6d6;border:1px solid #e6c44d;border-radius:6px;
padding:10px 14px;margin:14px 0;font-weight:600}
table{border-collapse:collapse;width:100%;margin:6px 0 10px}th,td{border:1px solid #dde2ea;padding:5px 8px;
text-align:left;vertical-align:top}th{background:#f3f5f9;font-weight:600}td.num{text-align:right;
font-variant-numeric:tabular-nums;white-space:nowrap}tr.best td{background:#ecf8ef}
.ci{color:#6b7588;font-size:12px}.tag{display:inline-block;background:#e8edf6;border-radius:4px;padding:0 5px;
font-size:11.5px;margin-left:4px}.bad{color:#a02828}.charts{display:flex;flex-wrap:wrap;gap:24px}
.chart h3{margin-top:4px}audio{width:210px;height:32px;display:block}.hyp{color:#5a6475;font-size:12px;
margin-top:2px}.err{font-size:12px;font-weight:600}.text{max-width:260px}code{font-size:12px}
details{margin:6px 0}summary{cursor:pointer}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None, scale: float = 100.0, digits: int = 1) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{scale * value:.{digits}f}"


def _ci(ci: tuple[float, float] | None, scale: float = 100.0) -> str:
    return "" if ci is None else f'<span class="ci">[{_pct(ci[0], scale)}, {_pct(ci[1], scale)}]</span>'


def _href(target: Path, base: Path) -> str:
    rel = os.path.relpath(Path(target).resolve(), base.resolve())
    return quote(Path(rel).as_posix())


def bar_chart_svg(
    title: str,
    labels: Sequence[str],
    values: Sequence[float | None],
    cis: Sequence[tuple[float, float] | None],
    scale: float = 100.0,
    unit: str = "",
    lower_is_better: bool = True,
    width: int = 520,
) -> str:
    """A horizontal bar chart (inline SVG): one bar per label, CI whiskers, the value at the bar's end."""
    row_h, label_w, pad = 26, 190, 56
    plot_w = width - label_w - pad
    finite = [v for v in values if v is not None and math.isfinite(v)]
    highs = [c[1] for c in cis if c is not None] + finite
    top = max(highs) if highs else 1.0
    top = top if top > 0 else 1.0
    height = row_h * len(labels) + 30
    # highlight a winner only when the values differ
    best = (min(finite) if lower_is_better else max(finite)) if len(set(finite)) > 1 else None
    parts = [
        f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(title)}" class="bars">',
        f'<line x1="{label_w}" y1="4" x2="{label_w}" y2="{height - 22}" stroke="#9aa3b2"/>',
    ]
    for i, (label, value, ci) in enumerate(zip(labels, values, cis, strict=True)):
        y = 6 + i * row_h
        short = label if len(label) <= 28 else label[:27] + "…"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12" '
            f'fill="#1d2330"><title>{_e(label)}</title>{_e(short)}</text>'
        )
        if value is None or not math.isfinite(value):
            parts.append(f'<text x="{label_w + 6}" y="{y + 15}" font-size="12" fill="#a02828">no score</text>')
            continue
        w = max(1.0, plot_w * value / top)
        color = "#3d9a5b" if value == best else "#4b73c4"
        parts.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 10}" fill="{color}" rx="2">'
            f"<title>{_e(label)}: {_pct(value, scale, 2)}{unit}</title></rect>"
        )
        end = w
        if ci is not None:
            x0, x1 = label_w + plot_w * ci[0] / top, label_w + plot_w * ci[1] / top
            ym = y + 3 + (row_h - 10) / 2
            parts.append(
                f'<line x1="{x0:.1f}" y1="{ym:.1f}" x2="{x1:.1f}" y2="{ym:.1f}" stroke="#1d2330" '
                f'stroke-width="1.2"/><line x1="{x0:.1f}" y1="{ym - 5:.1f}" x2="{x0:.1f}" y2="{ym + 5:.1f}" '
                f'stroke="#1d2330"/><line x1="{x1:.1f}" y1="{ym - 5:.1f}" x2="{x1:.1f}" y2="{ym + 5:.1f}" '
                f'stroke="#1d2330"/>'
            )
            end = max(end, x1 - label_w)
        parts.append(
            f'<text x="{label_w + end + 5:.1f}" y="{y + 15}" font-size="12" fill="#1d2330">'
            f"{_pct(value, scale)}{unit}</text>"
        )
    parts.append(
        f'<text x="{label_w}" y="{height - 6}" font-size="11" fill="#5a6475">0</text>'
        f'<text x="{label_w + plot_w}" y="{height - 6}" font-size="11" fill="#5a6475" '
        f'text-anchor="end">{_pct(top, scale)}{unit}</text></svg>'
    )
    return "".join(parts)


_CURVES = (("cer", "CER/WER %", "#c0392b"), ("ss", "SS ×100", "#2e7d32"), ("cv_loss", "CV loss (own scale)", "#5a6475"))


def probe_curves_svg(part: str, history: Sequence[dict[str, Any]], width: int = 560, height: int = 240) -> str:
    """A standalone SVG line chart of one part's training: probe CER % and SS ×100 against epoch on one
    axis (0 to the highest value), the CV loss on its own scale (its range in the legend), and a dashed
    line at the best probe composite's epoch. ``history``: :func:`cosyml.train.probe.read_history` rows."""
    rows = sorted((r for r in history if isinstance(r.get("epoch"), int)), key=lambda r: r["epoch"])
    left, right, top, bottom = 44, 16, 28, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    epochs = [r["epoch"] for r in rows] or [0]
    e0, e1 = min(epochs), max(epochs)

    def x(epoch: float) -> float:
        return left + (plot_w * (epoch - e0) / (e1 - e0) if e1 > e0 else plot_w / 2)

    def finite(r: dict[str, Any], key: str) -> float | None:
        v = r.get(key)
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else None

    scaled = [100 * v for r in rows for k in ("cer", "ss") if (v := finite(r, k)) is not None]
    y_top = max([100.0, *scaled])
    cv = [v for r in rows if (v := finite(r, "cv_loss")) is not None]
    cv_lo, cv_hi = (min(cv), max(cv)) if cv else (0.0, 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{_e(part)} probe curves" class="curves">',
        f'<text x="{left}" y="16" font-size="13" fill="#1d2330">{_e(part)}: probe CER/SS and CV loss by epoch</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#9aa3b2"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#9aa3b2"/>',
        f'<text x="{left - 4}" y="{top + 4}" font-size="11" text-anchor="end" fill="#5a6475">{y_top:.0f}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" font-size="11" text-anchor="end" fill="#5a6475">0</text>',
    ]
    for e in sorted(set(epochs)):
        parts.append(
            f'<text x="{x(e):.1f}" y="{top + plot_h + 14}" font-size="11" text-anchor="middle" fill="#5a6475">{e}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" font-size="11" text-anchor="middle" fill="#5a6475">'
        "epoch</text>"
    )
    best = [(c, r["epoch"]) for r in rows if (c := finite(r, "composite")) is not None]
    if best:
        best_epoch = max(best, key=lambda pair: (pair[0], pair[1]))[1]
        bx = x(best_epoch)
        parts.append(
            f'<line x1="{bx:.1f}" y1="{top}" x2="{bx:.1f}" y2="{top + plot_h}" stroke="#1d2330" stroke-dasharray="4 3">'
            f"<title>best probe composite: epoch {best_epoch}</title></line>"
        )
    for i, (key, label, color) in enumerate(_CURVES):
        points = []
        for r in rows:
            v = finite(r, key)
            if v is None:
                continue
            share = (v - cv_lo) / (cv_hi - cv_lo) if key == "cv_loss" and cv_hi > cv_lo else None
            if key == "cv_loss":
                y = top + plot_h * (1 - (share if share is not None else 0.5))
            else:
                y = top + plot_h * (1 - 100 * v / y_top)
            points.append((x(r["epoch"]), y, v))
        if not points:
            continue
        dash = ' stroke-dasharray="2 2"' if key == "cv_loss" else ""
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"{dash}/>')
        for px, py, v in points:
            shown = f"{v:.4g}" if key == "cv_loss" else f"{100 * v:.1f}"
            parts.append(
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{color}"><title>{label}: {shown}</title></circle>'
            )
        legend = f"{label} [{cv_lo:.3g}..{cv_hi:.3g}]" if key == "cv_loss" else label
        lx = left + 8 + i * 170
        parts.append(f'<text x="{lx}" y="{top + 12}" font-size="11" fill="{color}">{_e(legend)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _probe_section(result: SuiteResult) -> str:
    """Per trained part: the probe curves and a table of the probed epochs (the best composite marked)."""
    parts = {p: h for p, h in result.probe_history.items() if h}
    if not parts:
        return (
            '<p class="meta">No per-epoch probe history in the training runs (train with '
            "<code>train.probe_every_epochs: 1</code> to see CER/SS against epoch here).</p>"
        )
    blocks = []
    for part, history in parts.items():
        composites = [float(c) for r in history if isinstance(c := r.get("composite"), int | float)]
        best = max(composites) if composites else None
        body = []
        for r in history:
            mark = ' class="best"' if best is not None and r.get("composite") == best else ""
            cv = r.get("cv_loss")
            comp = r.get("composite")
            body.append(
                f"<tr{mark}><td>{r['epoch']}</td><td>{'–' if cv is None else f'{cv:.4f}'}</td>"
                f"<td>{_pct(r.get('cer'))}</td><td>{_pct(r.get('ss'))}</td>"
                f"<td>{'–' if comp is None else f'{comp:.4f}'}</td></tr>"
            )
        blocks.append(
            f'<div class="chart" id="probe-{_e(part)}">{probe_curves_svg(part, history)}'
            f"<table><thead><tr><th>epoch</th><th>CV loss</th><th>CER/WER %</th><th>SS ×100</th><th>composite</th>"
            f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        )
    note = (
        '<p class="meta">Per-epoch probe of each training run (a few fixed dev and out-of-domain lines, fixed '
        "seeds): CER/WER and SS of the epoch's weights, with the CV loss on its own scale. The dashed line is the "
        "epoch with the best composite (the <code>best-probe</code> source).</p>"
    )
    return note + f'<div class="charts">{"".join(blocks)}</div>'


def _candidate_table(result: SuiteResult) -> str:
    scored = result.scored
    finite = [c.summary.cer for c in scored if c.summary and c.summary.cer is not None]
    best = min(finite) if len(set(finite)) > 1 else None
    rows = []
    for c in scored:
        s = c.summary
        assert s is not None
        klass = ' class="best"' if best is not None and s.cer == best else ""
        tags = '<span class="tag">base</span>' if c.candidate.is_base else ""
        rows.append(
            f"<tr{klass}><td>{_e(c.candidate.name)}{tags}</td><td><code>{_e(c.candidate.llm)}</code></td>"
            f"<td><code>{_e(c.candidate.flow)}</code></td>"
            f'<td class="num">{_pct(s.cer, digits=2)} {_ci(s.cer_ci)}</td>'
            f'<td class="num">{_pct(s.ss)} {_ci(s.ss_ci)}</td><td class="num">{s.n}</td>'
            f'<td class="num">{s.missing}</td><td class="num">{_pct(s.over_50, digits=0)}</td></tr>'
        )
    for c in result.candidates:
        if not c.ok:
            rows.append(
                f"<tr><td>{_e(c.candidate.name)}</td><td><code>{_e(c.candidate.llm)}</code></td>"
                f'<td><code>{_e(c.candidate.flow)}</code></td><td colspan="5" class="bad">not evaluated: '
                f"{_e(c.error)}</td></tr>"
            )
    level = round(100 * float(result.settings.get("ci_level", 0.95)))
    return (
        '<table id="candidates"><thead><tr><th>candidate</th><th>llm</th><th>flow</th>'
        f'<th>CER/WER % <span class="ci">[{level}% CI]</span></th><th>SS ×100 <span class="ci">[{level}% CI]</span></th>'
        "<th>n</th><th>missing</th><th>&gt;50% err</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _subset_table(result: SuiteResult) -> str:
    scored = result.scored
    head = "".join(f"<th>{_e(c.candidate.name)}</th>" for c in scored)
    rows = []
    for subset in result.subsets:
        metrics = {it.language for it in subset.items}
        metric = "CER" if metrics and metrics <= {"zh", "ja", "ko", "yue"} else ("WER" if metrics else "–")
        cells = []
        for c in scored:
            s = c.subsets.get(subset.name)
            if s is None or s.n == 0:
                cells.append('<td class="num">–</td>')
            else:
                cells.append(
                    f'<td class="num">{_pct(s.cer, digits=2)} {_ci(s.cer_ci)}<br>'
                    f"SS {_pct(s.ss)}{f' · {s.missing} missing' if s.missing else ''}</td>"
                )
        skipped = f'<span class="bad">{len(subset.problems)} skipped</span>' if subset.problems else ""
        rows.append(
            f"<tr><td>{_e(subset.name)} {skipped}</td><td>{metric}</td><td>{_e(subset.language)}</td>"
            f'<td class="num">{len(subset.items)}</td>{"".join(cells)}</tr>'
        )
    return (
        '<table id="subsets"><thead><tr><th>subset</th><th>metric</th><th>language</th><th>items</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _skipped_section(result: SuiteResult) -> str:
    skipped = result.skipped
    failures = [(c.candidate.name, f) for c in result.candidates for f in c.synth_failures]
    parts = []
    if skipped:
        counts = ", ".join(f"{reason}: {n}" for reason, n in Counter(p.reason for p in skipped).most_common())
        rows = "".join(
            f"<tr><td>{_e(p.subset)}</td><td>{_e(p.utt)}</td><td>{_e(p.reason)}</td><td>{_e(p.detail)}</td></tr>"
            for p in skipped
        )
        parts.append(
            f'<p id="skipped-count">{len(skipped)} test items could not be scored ({_e(counts)}); '
            'the rest were scored.</p><details><summary>list</summary><table id="skipped"><thead><tr>'
            "<th>subset</th><th>utt</th><th>reason</th><th>detail</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></details>"
        )
    else:
        parts.append('<p id="skipped-count">Every test item was usable.</p>')
    if failures:
        rows = "".join(
            f"<tr><td>{_e(name)}</td><td>{_e(f.subset)}</td><td>{_e(f.utt)}</td><td>{_e(f.error)}</td></tr>"
            for name, f in failures
        )
        parts.append(
            f"<p>{len(failures)} utterances failed to synthesise (scored as missing: error 100%, SS 0)."
            '</p><table id="synth-failures"><thead><tr><th>candidate</th><th>subset</th><th>utt</th>'
            f"<th>error</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    return "".join(parts)


def _copy_reference(src: Path, eval_dir: Path, subset: str, utt: str) -> Path:
    """Copy a reference/prompt wav to ``references/<subset>/<utt><ext>`` (so the report folder stands alone)."""
    target = eval_dir / "references" / slugify(subset) / f"{utt}{src.suffix}"
    write_if_changed(target, src.read_bytes())
    return target


def _listen_section(result: SuiteResult, max_utts: int) -> str:
    scored = result.scored
    if not scored:
        return "<p>No candidate was scored.</p>"
    rows_by: dict[tuple[str, str, str], UtteranceScore] = {
        (c.candidate.slug, r.subset, r.utt): r for c in scored for r in (c.report.rows if c.report else [])
    }
    head = "".join(f"<th>{_e(c.candidate.name)}</th>" for c in scored)
    blocks = []
    for subset in result.subsets:
        items = subset.items[:max_utts] if max_utts > 0 else subset.items
        if not items:
            continue
        body = []
        for item in items:
            ref = item.reference_wav or item.prompt_wav
            ref_kind = "recording of this text" if item.reference_wav else "prompt (voice to clone)"
            if ref is not None and ref.is_file():
                copied = _copy_reference(ref, result.eval_dir, subset.name, item.utt)
                ref_cell = (
                    f'<audio controls preload="none" class="ref" src="{_href(copied, result.eval_dir)}"></audio>'
                    f'<div class="hyp">{_e(ref_kind)}</div>'
                )
            else:
                ref_cell = '<div class="hyp">no reference audio (sft: speaker embedding)</div>'
            cells = []
            for c in scored:
                row = rows_by.get((c.candidate.slug, subset.name, item.utt))
                wav = c.output_wav(subset.name, item.utt)
                if row is None or row.status != "scored" or not wav.is_file():
                    cells.append('<td><span class="bad">missing</span></td>')
                    continue
                cells.append(
                    f'<td><audio controls preload="none" class="candidate" src="{_href(wav, result.eval_dir)}"></audio>'
                    f'<div class="err">{row.metric.upper()} {_pct(row.error)}% · SS {_pct(row.ss)}</div>'
                    f'<div class="hyp">{_e(row.hypothesis) or "(empty transcript)"}</div></td>'
                )
            instruct = f'<div class="hyp">instruct: {_e(item.instruct)}</div>' if item.instruct else ""
            body.append(
                f'<tr><td class="text"><b>{_e(item.utt)}</b><br>{_e(item.text)}{instruct}</td>'
                f"<td>{ref_cell}</td>{''.join(cells)}</tr>"
            )
        more = f" (first {len(items)} of {len(subset.items)})" if len(items) < len(subset.items) else ""
        blocks.append(
            f'<h3>{_e(subset.name)}{more}</h3><table class="listen"><thead><tr><th>text</th>'
            f"<th>reference</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        )
    return "".join(blocks)


#: Clips per reason the data-checks section offers to listen to (the rest: see the check files).
DATA_CHECK_MAX_CLIPS = 50


def _data_checks_section(checks: DataChecks | None, eval_dir: Path) -> str:
    """Counts per reason and a player per flagged clip (copied to ``data_checks/<reason>/``)."""
    if checks is None:
        return "<p id=\"data-checks\">No data-check files found (prepare's rejects.jsonl, extract's speaker_check.json).</p>"
    counts = "".join(f'<tr><td>{_e(r)}</td><td class="num">{n}</td></tr>' for r, n in checks.counts.items())
    parts = [
        '<div id="data-checks"><table id="data-check-counts"><thead><tr><th>reason</th><th>clips</th></tr></thead>'
        f"<tbody>{counts}</tbody></table>"
    ]
    shown: Counter[str] = Counter()
    rows = []
    for clip in checks.clips:
        shown[clip.reason] += 1
        if shown[clip.reason] > DATA_CHECK_MAX_CLIPS:
            continue
        player = '<span class="bad">audio not found</span>'
        if clip.wav is not None:
            target = eval_dir / "data_checks" / clip.reason / f"{slugify(clip.utt)}{clip.wav.suffix}"
            write_if_changed(target, clip.wav.read_bytes())
            player = f'<audio controls preload="none" class="flagged" src="{_href(target, eval_dir)}"></audio>'
        rows.append(
            f"<tr><td>{_e(clip.reason)}</td><td>{_e(clip.utt)}</td><td>{player}</td><td>{_e(clip.detail)}</td></tr>"
        )
    if rows:
        parts.append(
            '<table id="data-check-clips"><thead><tr><th>reason</th><th>utt</th><th>listen</th><th>detail</th></tr>'
            f"</thead><tbody>{''.join(rows)}</tbody></table>"
        )
    sources = ", ".join(f"<code>{_e(f)}</code>" for f in checks.files)
    parts.append(f'<p class="meta">from {sources}</p></div>')
    return "".join(parts)


def render_html(result: SuiteResult, max_utts: int = 4, data_checks: DataChecks | None = None) -> str:
    """The whole ``report.html`` page as a string (copies the reference audio it links to)."""
    scored = result.scored
    charts = ""
    if scored:
        svg = _charts(result)
        charts = (
            f'<div class="charts"><div class="chart" id="chart-cer"><h3>CER/WER % (lower is better)</h3>{svg["cer"]}'
            f'</div><div class="chart" id="chart-ss"><h3>SS_campplus ×100 (higher is better)</h3>{svg["ss"]}</div></div>'
        )
    notice = f'<div class="notice" id="kit-notice">{_e(KIT_NOTICE)}</div>' if result.tiny_kit else ""
    s = result.settings
    meta = (
        f"model dir <code>{_e(result.model_dir)}</code> · {len(result.candidates)} candidates · "
        f"{sum(len(x.items) for x in result.subsets)} utterances in {len(result.subsets)} subsets<br>"
        f"ASR: Whisper <code>{_e(s.get('whisper_model'))}</code> ({_e(s.get('asr'))}); text: {_e(s.get('normalisation'))}"
        f"<br>SS: {_e(s.get('ss_name'))} (<code>{_e(s.get('ss_model'))}</code>), cosine to the prompt wav, or to "
        "the speaker's mean embedding for the sft set; CAM++ is the embedding CosyVoice conditions on, so SS "
        "ranks candidates but is not comparable to published ERes2Net/WavLM numbers.<br>"
        f"CER/WER: mean per-utterance error (CER for zh/ja/ko, WER otherwise), missing outputs count as 100%."
    )
    settings = _e(json.dumps(s, ensure_ascii=False, indent=1, default=str))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>cosyml evaluation: {_e(result.speaker)}</title><style>{_CSS}</style></head><body>"
        f'<h1>Evaluation of speaker “{_e(result.speaker)}”</h1><p class="meta">{meta}</p>{notice}'
        f"<h2>Candidates</h2>{_candidate_table(result)}{charts}"
        f"<h2>Per subset</h2>{_subset_table(result)}"
        f'<h2>Training curves</h2><div id="probe-curves">{_probe_section(result)}</div>'
        f"<h2>Skipped</h2>{_skipped_section(result)}"
        f"<h2>Data checks</h2>{_data_checks_section(data_checks, result.eval_dir)}"
        f'<h2>Listen</h2><div id="listen">{_listen_section(result, max_utts)}</div>'
        f"<h2>Settings</h2><details><summary>settings</summary><pre>{settings}</pre></details>"
        "</body></html>\n"
    )
