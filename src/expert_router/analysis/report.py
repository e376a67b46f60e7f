"""One report from a results folder: the figures as PNGs, a Markdown summary and a self-contained HTML."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from expert_router.analysis import digest, plots
from expert_router.analysis.findings import findings_sections
from expert_router.analysis.overhead import overhead_note, overhead_rows
from expert_router.analysis.results import RESUME_FILE, Cell, CellKey, load_cells, prompt_lengths, read_json
from expert_router.analysis.sections import Section
from expert_router.errors import UserError

COLUMNS = [
    ("configuration", "configuration"),
    ("mix", "mix"),
    ("users", "users"),
    ("requests (n)", "requests"),
    ("error rate", "error_rate"),
    ("TTFT median (ms)", "ttft_median_ms"),
    ("TTFT p99 (ms)", "ttft_p99_ms"),
    ("open loop: TTFT p99 from schedule (ms)", "ttft_scheduled_p99_ms"),
    ("TPOT median (ms)", "tpot_median_ms"),
    ("TPOT p99 (ms)", "tpot_p99_ms"),
    ("user throughput (tok/s)", "user_throughput"),
    ("p99 response time (s)", "response_time_p99_s"),
    ("system throughput, steady mean (tok/s)", "system_throughput_mean"),
    ("peak (tok/s)", "system_throughput_peak"),
    ("tokens: usage / chunks", "tokens"),
    ("goodput", "goodput"),
    ("gateway time (ms, mean ± std)", "route"),
    ("valid", "valid"),
]
ERROR_RATE_FLAG = 0.01
"""A cell whose error rate is above this is flagged beside its latencies."""


OVERHEAD_COLUMNS = [
    ("via gateway", "configuration"),
    ("direct", "direct"),
    ("mix", "mix"),
    ("users", "users"),
    ("n (gateway / direct)", "n"),
    ("TTFT difference mean (ms)", "ttft_diff_mean_ms"),
    ("± std (ms)", "ttft_diff_std_ms"),
    ("difference of p50s (ms)", "ttft_diff_p50_ms"),
    ("difference of p99s (ms)", "ttft_diff_p99_ms"),
    ("gateway's own time mean (ms)", "gateway_mean_ms"),
    ("± std (ms)", "gateway_std_ms"),
]


@dataclass
class Report:
    folder: Path
    figures: list[Path]
    rows: list[dict[str, Any]]
    markdown: Path
    html: Path


def table_row(cell: Cell) -> dict[str, Any]:
    """One line of the summary table: repetitions pooled (system throughput averaged per run)."""
    s = digest.pooled(cell.runs)

    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1000

    def pm(mean: float | None, std: float | None, scale: float = 1.0) -> str | None:
        return None if mean is None or std is None else f"{mean * scale:.1f} ± {std * scale:.1f}"

    flagged = s.error_rate > ERROR_RATE_FLAG
    return {
        "configuration": cell.key.configuration,
        "mix": cell.key.mix,
        "users": cell.key.users,
        "requests": s.requests,
        "error_rate": f"{s.error_rate:.1%}" + (" (!)" if flagged else ""),
        "error_rate_value": s.error_rate,
        "ttft_median_ms": ms(s.ttft_median_s),
        "ttft_p99_ms": ms(s.ttft_p99_s),
        "ttft_scheduled_p99_ms": ms(s.ttft_scheduled_p99_s) if cell.mode == "open" else None,
        "ttft_n": s.ttft_n,
        "tpot_median_ms": ms(s.tpot_median_s),
        "tpot_p99_ms": ms(s.tpot_p99_s),
        "tpot_n": s.tpot_n,
        "user_throughput": pm(s.user_throughput_mean, s.user_throughput_std),
        "user_throughput_mean": s.user_throughput_mean,
        "user_throughput_std": s.user_throughput_std,
        "response_time_p99_s": s.response_time_p99_s,
        "system_throughput_mean": s.system_throughput_mean,
        "system_throughput_peak": s.system_throughput_peak,
        "steady_windows": s.steady_windows,
        "tokens": f"{s.output_tokens:,} / {s.chunk_tokens:,}",
        "goodput": s.goodput,
        "route": pm(s.route_mean_s, s.route_std_s, 1000),
        "route_p50_ms": ms(s.route_p50_s),
        "route_p99_ms": ms(s.route_p99_s),
        "valid": "yes" if cell.valid else "no",
        "reasons": sorted(set(cell.reasons)),
    }


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def write_report(
    results: Path, out: Path | None = None, fig7_users: list[int] | None = None, quality: Path | None = None
) -> Report:
    """The report of a results folder; with `quality` (a folder written by `expert-router evaluate`) it
    also shows the experts' answer quality beside the speed figures."""
    cells = load_cells(results)
    out = out or results / "report"
    out.mkdir(parents=True, exist_ok=True)
    answer_quality = quality_section(quality, out) if quality is not None else None  # first: it may refuse
    figures = _figures(cells, out, fig7_users)
    if answer_quality is not None:
        figures.extend(answer_quality[1])
    ordered = sorted(cells.items(), key=lambda kv: (kv[0].mix, kv[0].configuration, kv[0].users))
    rows = [table_row(cell) for _, cell in ordered]
    invalid = [r for r in rows if r["valid"] == "no"]
    whole = [f"{k.configuration} {k.mix} u{k.users}" for k, c in ordered if any(r.windows.whole_run for r in c.runs)]
    note = " ".join(n for n in (_invalid_note(invalid), _whole_run_note(whole)) if n)
    sections = [Section("Every cell", COLUMNS, rows, note)]
    if answer_quality is not None:
        sections.append(answer_quality[0])
    overhead = overhead_rows(cells, _direct_pairs(results))
    if overhead:
        sections.append(
            Section(
                "Routing overhead: TTFT through the gateway minus TTFT direct, same load",
                OVERHEAD_COLUMNS,
                overhead,
                overhead_note(overhead),
            )
        )
    if {"A", "B", "C", "D", "E"} <= {k.configuration for k in cells}:  # the paper's configurations (Table I)
        sections += findings_sections(cells)
    title = f"Expert Router report: {results.name}"
    (out / "summary.md").write_text(render_markdown(title, sections, figures))
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    (out / "report.html").write_text(render_html(title, sections, figures))
    return Report(out, figures, rows, out / "summary.md", out / "report.html")


def _figures(cells: dict[CellKey, Cell], out: Path, fig7_users: list[int] | None) -> list[Path]:
    mixes = sorted({k.mix for k in cells})
    users = sorted({k.users for k in cells})
    unmeasured = sorted(set(fig7_users or []) - set(users))
    if unmeasured:  # an empty panel, without a word, had been drawn for each
        raise UserError(f"--fig7-users {unmeasured}: no cells at those user counts; measured: {users}")
    chosen = fig7_users or sorted({users[0], users[len(users) // 2], users[-1]})
    lengths, unit = prompt_lengths(cells)
    figures = [plots.fig2_input_lengths(lengths, unit, out / "fig2_input_lengths.png")]
    for mix in mixes:
        figures.append(plots.fig3_response_time(cells, mix, out / f"fig3_response_time_{mix}.png"))
        figures.append(plots.fig4_ttft(cells, mix, out / f"fig4_ttft_{mix}.png"))
        figures.append(plots.fig5_tpot(cells, mix, out / f"fig5_tpot_{mix}.png"))
    figures.append(plots.fig6_user_throughput_and_p99(cells, out / "fig6_user_throughput_p99.png"))
    for mix in mixes:
        figures.append(plots.fig7_system_throughput(cells, mix, chosen, out / f"fig7_system_throughput_{mix}.png"))
    return figures


def quality_section(folder: Path, out: Path) -> tuple[Section, list[Path]]:
    """The answer-quality table and heat map from `expert-router evaluate`'s folder. Asked for, it must
    be there: a folder with no quality.json (a typo, evaluate not run) gave a report without the section
    and without a word, and a damaged file a traceback."""
    from expert_router.quality.evaluate import Evaluation
    from expert_router.quality.figures import COLUMNS as QUALITY_COLUMNS
    from expert_router.quality.figures import table_rows

    path = folder / "quality.json"
    if not path.is_file():
        raise UserError(f"--quality: {folder} has no quality.json (write it with `expert-router evaluate`)")
    try:
        data = json.loads(path.read_text())
        evaluation = Evaluation(
            np.array(data["perplexity"], dtype=float),
            np.array(data["base_perplexity"], dtype=float),
            data["documents"],
            {int(c): v for c, v in data["cluster_labels"].items()},
            data.get("routing_accuracy"),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"--quality: {path} is not a file written by `expert-router evaluate` ({exc!r})") from None
    figures = []
    heat_map = folder / "quality_perplexity.png"
    if heat_map.is_file():
        figures.append(Path(shutil.copy(heat_map, out / heat_map.name)))
    summary = evaluation.summary()
    note = (
        f"The cluster's own expert has the lowest perplexity in {summary['diagonal_lowest_rows']} of "
        f"{summary['rows_with_held_out']} rows; routed expert / base model {summary['routed_vs_base']:.2f}, "
        f"routed / random other expert {summary['routed_vs_random']:.2f}; routing accuracy on held-out "
        f"labelled prompts "
        + ("-" if summary["routing_accuracy"] is None else f"{summary['routing_accuracy']:.0%}")
        + "."
    )
    return Section(
        "Answer quality: perplexity on each cluster's held-out text (lower is better)",
        list(QUALITY_COLUMNS),
        table_rows(evaluation),
        note,
    ), figures


def _direct_pairs(results: Path) -> dict[str, str]:
    """{direct configuration: the configuration it is the direct path of}, from every configuration the
    folder's runs and resumes added (the manifest holds the first run's only: a direct path added on
    resume was measured and never shown)."""
    settings, manifest = results / RESUME_FILE, results / "manifest.json"
    if settings.is_file():
        configurations = list(read_json(settings).get("configurations", {}).values())
    elif manifest.is_file():
        configurations = read_json(manifest).get("experiment", {}).get("configurations", [])
    else:
        return {}
    return {c["name"]: c["direct_of"] for c in configurations if c.get("direct_of")}


def _whole_run_note(cells: list[str]) -> str:
    """Cells whose runs never held their load: their system throughput mean is not a steady one."""
    if not cells:
        return ""
    shown = ", ".join(cells[:6]) + (", ..." if len(cells) > 6 else "")
    return (
        f"No steady state in {len(cells)} cell(s) ({shown}): a run too short for its load, whose system "
        "throughput mean is over every window, ramp-up and drain included."
    )


def _invalid_note(invalid: list[dict[str, Any]]) -> str:
    """One line per kind of problem (reasons that differ only in their numbers), not one per cell."""
    if not invalid:
        return ""
    kinds: dict[str, list[str]] = {}
    for reason in sorted({reason for row in invalid for reason in row["reasons"]}):
        kinds.setdefault(re.sub(r"\d+(\.\d+)?", "#", reason), []).append(reason)
    lines = [
        reasons[0] if len(reasons) == 1 else f"{reasons[0]} (and {len(reasons) - 1} more like it)"
        for reasons in kinds.values()
    ]
    return (
        f"{len(invalid)} cell(s) were not measured well (marked valid: no); treat their numbers with care. "
        "Why: " + "; ".join(lines[:6])
    )


DEFINITIONS = (
    "Repetitions pooled. TTFT: send to first token; in an open loop also from when the request was due "
    "(a late send's wait in the client included), which goodput uses. TPOT: (last token - first token) / (tokens - 1), "
    "tokens counted per chunk. User throughput: tokens / response time. System throughput: tokens per "
    "2-second window; the mean is over steady-state windows only (after ramp-up, before drain). "
    "Error rate beside every latency; (!) marks more than 1% failed. See the README's Metrics section."
)


def render_markdown(title: str, sections: list[Section], figures: list[Path]) -> str:
    lines = [f"# {title}", "", DEFINITIONS, ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.note:
            lines += [f"**Note:** {section.note}", ""]
        lines += ["| " + " | ".join(name for name, _ in section.columns) + " |", "|" + "---|" * len(section.columns)]
        lines += ["| " + " | ".join(_fmt(row[key]) for _, key in section.columns) + " |" for row in section.rows]
        lines.append("")
    lines += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures]
    return "\n".join(lines) + "\n"


def _base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def render_html(title: str, sections: list[Section], figures: list[Path]) -> str:
    tables = "".join(_html_table(section) for section in sections)
    images = "".join(
        f'<figure><img alt="{html.escape(f.stem)}" src="data:image/png;base64,{_base64(f)}">'
        f"<figcaption>{html.escape(f.stem)}</figcaption></figure>"
        for f in figures
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} figure {{ margin: 2em 0; }} img {{ max-width: 100%; }} .note {{ color: #a60; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(DEFINITIONS)}</p>
{tables}
{images}
</body></html>
"""


def _html_table(section: Section) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in section.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(row[key]))}</td>" for _, key in section.columns) + "</tr>"
        for row in section.rows
    )
    note = f'<p class="note">{html.escape(section.note)}</p>' if section.note else ""
    return f"<h2>{html.escape(section.title)}</h2>{note}<table><tr>{head}</tr>{body}</table>"
