"""One report from a results folder: the figures as PNGs, a Markdown summary and a self-contained HTML."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from expert_router.analysis import metrics, plots
from expert_router.analysis.results import Cell, load_cells, prompt_lengths

COLUMNS = [
    ("configuration", "configuration"), ("mix", "mix"), ("users", "users"), ("requests", "requests"),
    ("error rate", "error_rate"), ("TTFT median (ms)", "ttft_median_ms"), ("TTFT p99 (ms)", "ttft_p99_ms"),
    ("TPOT mean (ms)", "tpot_mean_ms"), ("user throughput (tok/s)", "user_throughput"),
    ("p99 response time (s)", "response_time_p99_s"), ("system throughput (tok/s)", "system_throughput_mean"),
    ("route p50 (ms)", "route_ms_p50"), ("valid", "valid"),
]


@dataclass
class Report:
    folder: Path
    figures: list[Path]
    rows: list[dict]
    markdown: Path
    html: Path


def table_row(cell: Cell, window_s: float = 2.0) -> dict:
    """One line of the summary table, computed from the pooled records of a cell."""
    s = metrics.summarize(cell.records, window_s)
    # System throughput is a time series per run: average the per-repetition means.
    per_rep = [metrics.system_throughput(cell.repetition(i), window_s)[1] for i in range(cell.repetitions)]
    system = [float(np.mean(r)) for r in per_rep if len(r)]

    def ms(value):
        return None if value is None else value * 1000

    throughput = None if s.user_throughput_mean is None else f"{s.user_throughput_mean:.1f} ± {s.user_throughput_std:.1f}"
    return {
        "configuration": cell.key.configuration, "mix": cell.key.mix, "users": cell.key.users, "requests": s.requests,
        "error_rate": s.error_rate, "ttft_median_ms": ms(s.ttft_median_s), "ttft_p99_ms": ms(s.ttft_p99_s),
        "tpot_mean_ms": ms(s.tpot_mean_s), "user_throughput": throughput,
        "user_throughput_mean": s.user_throughput_mean, "user_throughput_std": s.user_throughput_std,
        "response_time_p99_s": s.response_time_p99_s,
        "system_throughput_mean": float(np.mean(system)) if system else None,
        "route_ms_p50": s.route_ms_p50, "valid": "yes" if cell.valid else "no",
    }


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def write_report(results: Path, out: Path | None = None, fig7_users: list[int] | None = None) -> Report:
    cells = load_cells(results)
    out = out or results / "report"
    out.mkdir(parents=True, exist_ok=True)
    mixes = sorted({k.mix for k in cells})
    users = sorted({k.users for k in cells})
    chosen = fig7_users or sorted({users[0], users[len(users) // 2], users[-1]})
    figures = [plots.fig2_input_lengths(prompt_lengths(cells), out / "fig2_input_lengths.png")]
    for mix in mixes:
        figures.append(plots.fig3_response_time(cells, mix, out / f"fig3_response_time_{mix}.png"))
        figures.append(plots.fig4_ttft(cells, mix, out / f"fig4_ttft_{mix}.png"))
        figures.append(plots.fig5_tpot(cells, mix, out / f"fig5_tpot_{mix}.png"))
    figures.append(plots.fig6_user_throughput_and_p99(cells, out / "fig6_user_throughput_p99.png"))
    for mix in mixes:
        figures.append(plots.fig7_system_throughput(cells, mix, chosen, out / f"fig7_system_throughput_{mix}.png"))
    rows = [table_row(cell) for _, cell in sorted(cells.items(), key=lambda kv: (kv[0].mix, kv[0].configuration, kv[0].users))]
    invalid = [r for r in rows if r["valid"] == "no"]
    markdown = _markdown(results, rows, figures, invalid)
    (out / "summary.md").write_text(markdown)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    html_path = out / "report.html"
    html_path.write_text(_html(results, rows, figures, invalid))
    return Report(out, figures, rows, out / "summary.md", html_path)


def _markdown(results: Path, rows: list[dict], figures: list[Path], invalid: list[dict]) -> str:
    lines = [f"# Expert Router report: {results.name}", ""]
    if invalid:
        lines += [f"**Note:** {len(invalid)} cell(s) were measured while the user simulator was itself a "
                  "bottleneck (marked `valid: no`); treat their numbers with care.", ""]
    lines += ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(row[key]) for _, key in COLUMNS) + " |" for row in rows]
    lines += ["", "Definitions: see the README's Metrics section. Figures:", ""]
    lines += [f"![{f.stem}]({f.name})" for f in figures]
    return "\n".join(lines) + "\n"


def _html(results: Path, rows: list[dict], figures: list[Path], invalid: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(row[key]))}</td>" for _, key in COLUMNS) + "</tr>"
                   for row in rows)
    images = "".join(
        f'<figure><img alt="{f.stem}" src="data:image/png;base64,{base64.b64encode(f.read_bytes()).decode()}">'
        f"<figcaption>{html.escape(f.stem)}</figcaption></figure>" for f in figures)
    note = (f'<p class="note">{len(invalid)} cell(s) were measured while the user simulator was itself a '
            "bottleneck (valid: no).</p>") if invalid else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Expert Router report: {html.escape(results.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }} th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} figure {{ margin: 2em 0; }} img {{ max-width: 100%; }} .note {{ color: #a60; }}
</style></head><body>
<h1>Expert Router report: {html.escape(results.name)}</h1>
<p>Configurations compared across concurrency levels; repetitions pooled. Metric definitions follow the
paper (TTFT, TPOT = mean gap between consecutive tokens, user throughput = tokens / response time,
system throughput in 2-second windows).</p>{note}
<table><tr>{head}</tr>{body}</table>
{images}
</body></html>
"""
