"""The data report of `prepare`: what came in, what was rejected or removed and why, the token lengths and the packing.

`DataReport` is what the preparation builds (train/data/prepare.py) and what the rest of a run reads: train/sft.py
(row and conversation counts), the memory check (the share of labelled tokens, the longest sample), the model card
and `python -m launch prepare`. Its sections stay plain mappings, as they are written to data_report.json:

    sources        one per source: {path, format, weight, records} (records: the usable ones)
    records_read   records met in the training sources, usable or rejected while reading
    rejects        Rejects.to_dict(): {total, by_reason: {reason: count}, first: {reason: "file:line"},
                   examples: {reason: ["file:line: ..."]}}
    warnings       the same shape: records kept but changed or worth a look (special-token text escaped, reasoning
                   dropped, a conversation that opens with the assistant, a .jsonl file read as a JSON array...)
    duplicates     {mode, exact_removed, near_removed[, threshold]}
    overlong       {mode, overlong, dropped, split_into, tokens_lost, label_tokens_lost, chunks_without_labels}
    split          {train, eval, eval_from}
    token_lengths  length_percentiles(...) plus max_length and over_max_length
    packing        {enabled, rows, tokens, label_tokens, max_length, packing_efficiency, padding_fraction}

`write_report` writes data_report.json, data_report.md and data_length_histogram.png; `console_summary` is the text
`python -m launch prepare` and train/sft.py print: the count of every stage, and each reason of a rejection or a
warning with its count and the first file:line where it occurred, so nobody has to open the report to see what was
dropped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from train.data.quality import length_percentiles

KNOWN_SECTIONS = ("sources", "rejects", "warnings", "duplicates", "overlong", "split", "token_lengths", "packing")


@dataclass
class DataReport:
    sources: List[Dict[str, Any]] = field(default_factory=list)
    records_read: int = 0
    rejects: Dict[str, Any] = field(default_factory=dict)
    warnings: Dict[str, Any] = field(default_factory=dict)
    duplicates: Dict[str, Any] = field(default_factory=dict)
    overlong: Dict[str, Any] = field(default_factory=dict)
    split: Dict[str, Any] = field(default_factory=dict)
    token_lengths: Dict[str, Any] = field(default_factory=dict)
    packing: Dict[str, Any] = field(default_factory=dict)
    eval_packing: Optional[Dict[str, Any]] = None
    max_length: int = 0
    seconds: float = 0.0

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "DataReport":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @property
    def train_conversations(self) -> int:
        return int(self.split.get("train", 0))

    @property
    def eval_conversations(self) -> int:
        return int(self.split.get("eval", 0))

    @property
    def rejected(self) -> int:
        return int(self.rejects.get("total", 0))

    @property
    def rejected_by_reason(self) -> Dict[str, int]:
        return dict(self.rejects.get("by_reason") or {})

    @property
    def rejected_first(self) -> Dict[str, str]:
        """The first 'file:line' of each rejection reason."""
        return dict(self.rejects.get("first") or {})

    @property
    def warned(self) -> int:
        return int(self.warnings.get("total", 0))

    @property
    def warnings_by_reason(self) -> Dict[str, int]:
        return dict(self.warnings.get("by_reason") or {})

    @property
    def warned_first(self) -> Dict[str, str]:
        """The first 'file:line' of each warning reason."""
        return dict(self.warnings.get("first") or {})

    @property
    def packing_efficiency(self) -> float:
        return float(self.packing.get("packing_efficiency", 0.0))

    @property
    def longest_sample(self) -> Optional[int]:
        return self.token_lengths.get("max")

    def label_fraction(self, row_length: Optional[int] = None) -> float:
        """Share of the token slots of the prepared rows (of `row_length`, default data.max_length) that carry a
        label; 1.0 when unknown."""
        rows, labels = self.packing.get("rows"), self.packing.get("label_tokens")
        width = row_length or self.packing.get("max_length")
        if not rows or not width or labels is None:
            return 1.0
        return min(1.0, labels / (rows * width))


def write_report(report: "DataReport | dict", out_dir: Path, lengths: Sequence[int],
                 max_length: int) -> Dict[str, Path]:
    """Write the three report files into out_dir and return their paths {'json', 'markdown', 'histogram'}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = report.to_dict() if isinstance(report, DataReport) else dict(report)
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

    warnings = report.get("warnings")
    if warnings and warnings.get("total"):
        lines += [f"## Warnings (records kept): {warnings['total']}", "",
                  *_table([{"reason": r, "count": c} for r, c in warnings.get("by_reason", {}).items()]), ""]
        for reason, examples in warnings.get("examples", {}).items():
            lines += [f"Examples of `{reason}`:", ""] + [f"- {_one_line(e)}" for e in examples] + [""]

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


def console_summary(report: DataReport) -> str:
    """The data report in a few lines for the console (see the module doc)."""
    n_sources = ", ".join(f"{Path(str(s.get('path', ''))).name or s.get('path')} {s.get('records', 0)}"
                          for s in report.sources)
    usable = sum(int(s.get("records", 0)) for s in report.sources)
    lines = [f"data: read {report.records_read or usable} records, {usable} usable ({n_sources})"]
    lines += _reasons("rejected", report.rejected, report.rejected_by_reason, report.rejected_first)
    lines += _reasons("warnings (kept)", report.warned, report.warnings_by_reason, report.warned_first)
    d = report.duplicates
    if d:
        near = f", {d.get('near_removed', 0)} near" if d.get("mode") == "near" else ""
        lines.append(f"  duplicates removed ({d.get('mode')}): {d.get('exact_removed', 0)} exact{near}")
    lines.append(f"  conversations: {report.train_conversations} train, {report.eval_conversations} eval"
                 + (f" ({report.split['eval_from']})" if report.split.get("eval_from") else ""))
    o = report.overlong
    if o.get("overlong"):
        what = (f"dropped ({o.get('tokens_lost', 0)} tokens, {o.get('label_tokens_lost', 0)} of them labels)"
                if o.get("mode") == "drop" else
                f"split into {o.get('split_into', 0)} chunks ({o.get('chunks_without_labels', 0)} without labels"
                + (", dropped)" if o.get("mode") == "split" else ", kept)"))
        lines.append(f"  longer than max_length {report.max_length}: {o['overlong']} samples, {what}")
    else:
        lines.append(f"  longer than max_length {report.max_length}: none")
    p = report.packing
    rows = f"  rows: {p.get('rows', 0)} train ({'packed' if p.get('enabled') else 'one sample per row'}, " \
           f"{p.get('tokens', 0)} tokens, {p.get('label_tokens', 0)} labelled, packing efficiency " \
           f"{report.packing_efficiency:.4f})"
    if report.eval_packing:
        rows += f", {report.eval_packing.get('rows', 0)} eval"
    lines.append(rows)
    return "\n".join(lines)


def _reasons(title: str, total: int, by_reason: Dict[str, int], first: Dict[str, str]) -> List[str]:
    if not total:
        return [f"  {title}: none"]
    return [f"  {title}: {total}"] + [f"    {reason}: {count}" + (f" (first at {first[reason]})" if reason in first
                                                                   else "") for reason, count in by_reason.items()]


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
