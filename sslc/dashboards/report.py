"""The offline HTML report of a search: one self-contained file (plotly.js embedded once, no CDN).

`build_report(run)` returns the sections with their plotly figures (so tests read the data); `write_report`
renders them to `<run_dir>/report.html`.
"""

from __future__ import annotations

import html
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go

from sslc.files import write_text_atomically
from sslc.metrics import describe_conditions, format_macs
from sslc.runs.dashboard_view import save_front_figure
from sslc.runs.record import RunRecord, open_run

from .anchors import anchors_figure
from .architecture import architecture_figure, teacher_architecture
from .front import has_latency, pareto_figure
from .history import hypervolume_figure, importance_figure, parallel_figure
from .points import CATEGORY_COUNTS, collect_points, count_by_category
from .probes import probe_figure
from .retrains import ranking_html, retrain_figure
from .table import pareto_rows, reference_rows, table_html

REPORT_FILE = "report.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.warning { background: #fff3cd; border: 1px solid #e0c36a; padding: .6em 1em; }
.note { color: #666; font-size: .9em; }
table.points, table.summary { border-collapse: collapse; font-size: .9em; }
table.points td, table.points th, table.summary td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
table.summary td:first-child { text-align: left; color: #555; }
tr.teacher, tr.baseline { color: #555; font-style: italic; }
code { background: #f4f4f4; padding: 0 .3em; }
"""


@dataclass
class Section:
    key: str
    title: str
    note: str = ""
    figure: go.Figure | None = None
    html: str = ""  # extra markup (tables)


@dataclass
class Report:
    run: RunRecord
    summary: list[tuple[str, str]]
    warnings: list[str]
    sections: list[Section] = field(default_factory=list)

    def section(self, key: str) -> Section | None:
        return next((s for s in self.sections if s.key == key), None)


def _summary(run: RunRecord, counts: dict[str, int]) -> list[tuple[str, str]]:
    settings, teacher, budget = run.record.settings, run.record.teacher, run.record.budget
    rows = [("run", f"{run.name} ({run.run_dir})"), ("teacher", teacher.description or settings.get("teacher", "-"))]
    rows.append(("data", str(settings.get("data", "-"))))
    if budget is not None and budget.max_macs:
        teacher_macs = teacher.macs_superb if budget.convention == "superb" else teacher.macs
        share = f" ({budget.max_macs / teacher_macs:.0%} of the teacher)" if teacher_macs else ""
        quoted = "in the SUPERB convention" if budget.convention == "superb" else f"for {budget.seconds:g} s of audio"
        rows.append(("budget", f"{format_macs(budget.max_macs)} MACs {quoted}{share}"))
    for key, label in (("max_params", "params limit"), ("max_latency_ms", "latency limit (ms)")):
        if budget is not None and getattr(budget, key):
            rows.append((label, f"{getattr(budget, key):,}"))
    rows.append(("objectives", ", ".join(run.record.objectives) + " (all minimised)"))
    if run.record.evaluation_protocol:  # how every loss in this report was measured (baselines and retrains included)
        rows.append(("score", run.record.evaluation_protocol.describe()))
    searched = [f"{k} {settings[k]}" for k in ("space", "sampler", "trials", "steps", "batch_size", "lr") if k in settings]
    if searched:
        rows.append(("search", ", ".join(searched)))
    rows.append(("trials", ", ".join(f"{n} {CATEGORY_COUNTS[c]}" for c, n in counts.items() if n) or "none yet"))
    finalists = run.record.finalists
    if finalists:  # sslc-search --finalists: the pick after retraining
        from sslc.search.finalists import winner_line

        probe = finalists.get("probe")
        rows.append(("finalists", f"trials {', '.join(str(r['trial']) for r in finalists['finalists'])} retrained "
                                  f"({finalists['label']})" + (f", probed ({probe['task']})" if probe else "")))
        rows.append(("winner", winner_line(finalists)))
    rows.append(("written", time.strftime("%Y-%m-%d %H:%M:%S")))
    return rows


def latency_conditions(run: RunRecord) -> str:
    """How the trials' latencies were timed (each trial records it), in words: an idle `sslc-info` with every
    core reads far faster than a trial timed with its own threads while other trials train."""
    measured = [t.latency_measurement for t in run.trials() if t.latency_measurement and t.latency_ms is not None]
    if not measured:
        return "how it was timed is not recorded (a study from an older sslc)"
    load_keys = ("load_average", "cpus")
    ways = sorted({describe_conditions({k: v for k, v in m.items() if k not in load_keys}) for m in measured})
    text = "; ".join(ways)
    loads = [m["load_average"] for m in measured if m.get("load_average") is not None]
    if loads:
        cpus = max(m.get("cpus") or 0 for m in measured) or "?"
        text += f", with a 1-minute load average of {min(loads):.1f}-{max(loads):.1f} on {cpus} CPUs"
    return f"{text} ({len(measured)} trials)"


def build_report(run: RunRecord) -> Report:
    points = collect_points(run)
    counts = count_by_category(points)
    warnings = []
    if run.record.teacher.is_random:
        warnings.append("The teacher has random weights: these results only show that the pipeline works.")
    if run.record.settings.get("data") == "demo":
        warnings.append("The data is the synthetic demo corpus, not speech.")
    report = Report(run, _summary(run, counts), warnings)

    report.sections.append(Section(
        "front", "Pareto front: held-out loss vs MACs", figure=pareto_figure(run, points, "macs"),
        note="Lower and further left is better. Trials without a held-out loss (stopped early, over budget, "
        "failed) sit on the strip below at their MACs. Dashed line: the budget; dotted: the teacher.",
    ))
    if has_latency(points):
        report.sections.append(Section(
            "front-latency", "Pareto front: held-out loss vs latency", figure=pareto_figure(run, points, "latency"),
            note="Latency is the median CPU forward time of the deployed model, measured during the search "
            f"(machine-dependent): {latency_conditions(run)}. Pareto points are those of the study's objectives.",
        ))
    figure, note = probe_figure(run)
    if figure is not None:  # only once sslc-probe recorded something on the run
        report.sections.append(Section("probes", "Downstream probes vs MACs", note, figure))
    figure, note = anchors_figure(run)
    report.sections.append(Section("anchors", "Beside the published compressed models", note, figure))
    rows = pareto_rows(run) + reference_rows(run)
    report.sections.append(Section(
        "table", "Pareto points", html=table_html(rows) if rows else "<p>No complete trial yet.</p>",
        note="Retrain points with sslc-retrain RUN_DIR --trial N (or --pareto); export with sslc-export.",
    ))
    figure, note = retrain_figure(run)
    if figure is not None:  # only once sslc-retrain validated a point
        report.sections.append(Section("retrains", "Retrained points: validation curves", note, figure,
                                       html=ranking_html(run)))
    figure, note = hypervolume_figure(run)
    report.sections.append(Section("hypervolume", "Hypervolume over trials", note, figure))
    teacher = teacher_architecture(run) if any(p.pareto for p in points) else None
    report.sections.append(Section(
        "architecture", "Where the Pareto points were compressed", figure=architecture_figure(run, points, teacher),
        note="Share of the teacher each model keeps, per teacher layer (heads, FFN units, low-rank ranks) and per "
        "CNN layer (channels). The numbers in the cells are kept / teacher sizes.",
    ))
    figure, note = importance_figure(run)
    report.sections.append(Section("importance", "What mattered for the loss", note, figure))
    figure, note = parallel_figure(run)
    report.sections.append(Section("parallel", "Knobs of the complete trials", note, figure))
    return report


def render_html(report: Report) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>sslc report: {html.escape(report.run.name)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>sslc search report: {html.escape(report.run.name)}</h1>"]
    parts += [f"<p class='warning'>{html.escape(w)}</p>" for w in report.warnings]
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in report.summary)
    parts.append(f"<table class='summary'>{rows}</table>")
    embedded = False
    for section in report.sections:
        parts.append(f"<h2 id='{section.key}'>{html.escape(section.title)}</h2>")
        if section.note:
            parts.append(f"<p class='note'>{html.escape(section.note)}</p>")
        parts.append(section.html)
        if section.figure is not None:
            # plotly.js goes into the page once, inline, so the file works offline.
            parts.append(section.figure.to_html(full_html=False, include_plotlyjs=not embedded, div_id=f"fig-{section.key}"))
            embedded = True
        elif not section.html:
            parts.append("<p class='note'>(not available)</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the report of the run in `run_dir` (default `<run_dir>/report.html`) and return its path; its front
    figure also goes on the study for optuna-dashboard (whose own Pareto plot has no axis titles)."""
    run = open_run(run_dir)
    out = Path(out) if out is not None else run.run_dir / REPORT_FILE
    report = build_report(run)
    written = write_text_atomically(out, render_html(report))
    save_front_figure(run.study, report.section("front").figure)
    return written
