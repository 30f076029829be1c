"""Write the data report of `prepare`: data_report.json, data_report.md and data_length_histogram.png.

The report is a plain dict built by the preparation step. Sections this module knows how to present (all optional):

    sources        list of dicts, one per source, e.g. {path, format, weight, records, accepted, rejected, in_mixture}
    rejects        Rejects.to_dict(): {total, by_reason: {reason: count}, examples: {reason: ["file:line: ..."]}}
    duplicates     e.g. {mode: near, threshold: 0.9, exact_removed: 3, near_removed: 5}
    overlong       e.g. {mode: drop, samples: 4, dropped: 4, tokens_dropped: 9120} or {mode: split, split_into: 9}
    split          e.g. {train: 950, eval: 50, eval_from: validation_split 0.05}
    token_lengths  length_percentiles(...); computed here from `lengths` when absent
    packing        e.g. {efficiency: 0.993, rows: 120, padding_fraction: 0.007}

Any other key is shown under "Settings and other values". The JSON file holds the dict as given plus token_lengths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

from train.data.quality import length_percentiles

KNOWN_SECTIONS = ("sources", "rejects", "duplicates", "overlong", "split", "token_lengths", "packing")


def write_report(report: dict, out_dir: Path, lengths: Sequence[int], max_length: int) -> Dict[str, Path]:
    """Write the three report files into out_dir and return their paths {'json', 'markdown', 'histogram'}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = dict(report)
    lengths = [int(n) for n in lengths]
    if "token_lengths" not in report:
        stats = length_percentiles(lengths)
        stats["max_length"] = max_length
        stats["over_max_length"] = sum(1 for n in lengths if n > max_length)
        report["token_lengths"] = stats

    paths = {"json": out_dir / "data_report.json", "markdown": out_dir / "data_report.md",
             "histogram": out_dir / "data_length_histogram.png"}
    _write_text(paths["json"], json.dumps(report, ensure_ascii=False, indent=2, default=str) + "\n")
    _write_text(paths["markdown"], render_markdown(report, max_length, paths["histogram"].name))
    plot_length_histogram(lengths, max_length, paths["histogram"])
    return paths


def render_markdown(report: dict, max_length: int, histogram_name: str = "data_length_histogram.png") -> str:
    lines: List[str] = ["# Data report", ""]

    if report.get("sources"):
        lines += ["## Sources", "", *_table(report["sources"]), ""]

    rejects = report.get("rejects")
    if rejects is not None:
        total = rejects.get("total", 0)
        lines += [f"## Rejected records: {total}", ""]
        if total:
            lines += _table([{"reason": r, "count": c} for r, c in rejects.get("by_reason", {}).items()]) + [""]
            for reason, examples in rejects.get("examples", {}).items():
                lines += [f"Examples of `{reason}`:", ""] + [f"- {_one_line(e)}" for e in examples] + [""]
        else:
            lines += ["No record was rejected.", ""]

    titles = {"duplicates": "Duplicates removed", "overlong": f"Samples longer than max_length ({max_length} tokens)",
              "split": "Train / validation split", "packing": "Packing"}
    for key in ("duplicates", "overlong", "split"):
        if key in report:
            lines += [f"## {titles[key]}", "", *_key_values(report[key]), ""]

    stats = report.get("token_lengths")
    if stats:
        lines += ["## Token lengths per sample", "", *_key_values(stats), "",
                  f"![token length histogram]({histogram_name})", ""]

    if "packing" in report:
        lines += [f"## {titles['packing']}", "", *_key_values(report["packing"]), ""]

    other = {k: v for k, v in report.items() if k not in KNOWN_SECTIONS}
    if other:
        lines += ["## Settings and other values", "", *_key_values(other), ""]
    return "\n".join(lines).rstrip() + "\n"


def plot_length_histogram(lengths: Sequence[int], max_length: int, path: Path) -> Path:
    """Histogram of token lengths with a dashed line at max_length (matplotlib, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    over = sum(1 for n in lengths if n > max_length)
    if lengths:
        upper = max(max(lengths), max_length)
        ax.hist(lengths, bins=min(60, max(10, len(set(lengths)))), range=(0, upper), color="#4C72B0",
                edgecolor="white")
        stats = length_percentiles(lengths)
        ax.set_title(f"Token lengths of {stats['count']} samples: p50 {stats['p50']:.0f}, p95 {stats['p95']:.0f}, "
                     f"max {stats['max']}", fontsize=11)
        ax.set_xlim(0, upper * 1.03)
    else:
        ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(0, max_length * 1.1)
    ax.axvline(max_length, color="#C44E52", linestyle="--", linewidth=2,
               label=f"max_length = {max_length} ({over} samples longer)")
    ax.set_xlabel("tokens per sample")
    ax.set_ylabel("samples")
    ax.legend(loc="upper right")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = str(value)
    return _one_line(text).replace("|", "\\|")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _table(rows: List[dict]) -> List[str]:
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return out


def _key_values(section: Any) -> List[str]:
    if not isinstance(section, dict):
        return [_cell(section)]
    return _table([{"key": key, "value": value} for key, value in section.items()])
