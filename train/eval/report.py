"""The evaluation's report: the side-by-side table (base vs fine-tuned, change in percent), eval_report.{md,json},
predictions.jsonl, a bar chart, and the same in a W&B run when tracking is on."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional




def improvement(base: float, tuned: float, lower_is_better: bool = False) -> str:
    """The change from `base` to `tuned` in percent of the base, signed as the value moved: "+631.6%" for a score
    that rose; for a loss, where a drop is the improvement, "-76.3%, lower is better"."""
    if base is None or tuned is None or (isinstance(base, float) and math.isnan(base)):
        return "n/a"
    if base == 0:
        return "n/a" if tuned == 0 else "up from 0"
    change = f"{100 * (tuned - base) / abs(base):+.1f}%"
    return f"{change}, lower is better" if lower_is_better else change


def is_lower_better(metric: str) -> bool:
    return "loss" in metric


def comparison_table(results: Dict[str, Dict[str, float]]) -> str:
    """Markdown table: one row per metric, one column per model, and the change from the first model to the last."""
    names = list(results)
    metrics = [k for k in results[names[-1]] if all(k in results[n] for n in names)]
    header = "| metric | " + " | ".join(names) + (" | change |" if len(names) > 1 else " |")
    lines = [header, "|" + " --- |" * (len(names) + 1 + (len(names) > 1))]
    for k in metrics:
        values = [results[n][k] for n in names]
        row = f"| {k} | " + " | ".join(f"{v:.4f}" for v in values)
        if len(names) > 1:
            row += f" | {improvement(values[0], values[-1], is_lower_better(k))}"
        lines.append(row + " |")
    return "\n".join(lines)


def plot_comparison(results: Dict[str, Dict[str, float]], png_path: Path) -> Path:
    """Grouped bars, one group per metric and one bar per model: scores in [0, 1] on the left, eval loss (lower is
    better) on its own axis on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    shared = [k for k in results[names[-1]] if all(k in results[n] for n in names)]
    scores = [k for k in shared if "loss" not in k]
    losses = [k for k in shared if "loss" in k]
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 0.55 * len(scores) + 3), 4.2), dpi=110,
                             gridspec_kw={"width_ratios": [max(len(scores), 1), max(len(losses), 1) + 0.6]})
    width = 0.8 / len(names)
    for ax, keys in ((axes[0], scores), (axes[1], losses)):
        for i, name in enumerate(names):
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(keys))]
            ax.bar(xs, [results[name][k] for k in keys], width, label=name)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(keys, rotation=60, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(0, 1.05)
    axes[0].set_ylabel("score (higher is better)")
    axes[0].legend(fontsize=8)
    axes[1].set_ylabel("loss per label token (lower is better)")
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return Path(png_path)


METRIC_NOTES = """Scores are means over the samples, in [0, 1], except BLEU (corpus BLEU over all samples, also in [0, 1];
x100 for the usual 0-100 scale). Text is split into Korean morphemes with Kiwi (particles and endings apart from their
stems, Latin words lowercased, punctuation dropped) before ROUGE (F1 of clipped n-gram matches; ROUGE-L from the
longest common subsequence) and BLEU (clipped 1-4-gram precisions, brevity penalty, "exp" smoothing). `cosine` is the
embedding cosine similarity of prediction and reference. `change` is relative to the first model, signed as the value
moved: scores are better higher, the loss lower ("-76.3%, lower is better" is a 76.3% smaller loss). See
train/eval/metrics.py and train/eval/scores.py for the exact definitions."""


def write_eval_report(out_dir: Path, results: Dict[str, Dict[str, float]], predictions: List[Dict[str, Any]],
                      meta: Dict[str, Any]) -> Dict[str, Path]:
    """eval_report.json (meta + results), eval_report.md (the table, notes, warnings), predictions.jsonl (one line
    per sample: reference, each model's answer and scores) and eval_chart.png into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = comparison_table(results)
    paths = {"json": out_dir / "eval_report.json", "md": out_dir / "eval_report.md",
             "predictions": out_dir / "predictions.jsonl", "chart": out_dir / "eval_chart.png"}
    paths["json"].write_text(json.dumps({"meta": meta, "results": results}, ensure_ascii=False, indent=2), encoding="utf-8")
    md = [f"# Evaluation: {meta.get('model')}", "", f"{meta.get('samples')} held-out samples, greedy decoding, "
          f"template `{meta.get('template')}`, cosine encoder `{meta.get('embedding_model')}`.", "", table, "",
          METRIC_NOTES, ""]
    md += [f"**Warning:** {w}\n" for w in meta.get("warnings", [])]
    md += ["![base vs fine-tuned](eval_chart.png)", ""]
    paths["md"].write_text("\n".join(md), encoding="utf-8")
    with open(paths["predictions"], "w", encoding="utf-8") as f:
        for p in predictions:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    plot_comparison(results, paths["chart"])
    return paths


def log_to_wandb(cfg, results: Dict[str, Dict[str, float]], predictions: List[Dict[str, Any]],
                 paths: Dict[str, Path], meta: Dict[str, Any]) -> Optional[Path]:
    """When tracking is on (tracking.wandb_mode online|offline): one W&B run (job_type eval, in output_dir/wandb, in
    the training run's group) with the comparison and the per-sample answers as tables, the chart, and each model's
    metrics in the summary. The config is logged redacted; nothing from the environment. Returns the run's folder."""
    from train.tracking import trainer_report_to

    if "wandb" not in trainer_report_to(cfg):  # not listed in tracking.report_to, or tracking.wandb_mode=disabled
        return None
    import wandb

    from train.config import redact, to_dict

    out = Path(cfg.output_dir)
    id_file = out / "wandb_run_id.txt"  # written by train/sft.py: the eval run joins the training run's group
    group = id_file.read_text().strip() if id_file.exists() else None
    run = wandb.init(mode=cfg.tracking.wandb_mode, project=cfg.tracking.project, entity=cfg.tracking.entity,
                     name=f"{cfg.tracking.run_name or out.name}-eval", job_type="eval", group=group, dir=str(out),
                     tags=list(cfg.tracking.tags), config={"recipe": redact(to_dict(cfg)), "eval": meta},
                     reinit="finish_previous")
    try:
        names = list(results)
        metrics = [k for k in results[names[-1]] if all(k in results[n] for n in names)]
        rows = [[k, *[results[n][k] for n in names],
                 improvement(results[names[0]][k], results[names[-1]][k], is_lower_better(k)) if len(names) > 1 else ""]
                for k in metrics]
        comparison = wandb.Table(columns=["metric", *names, "change"], data=rows)
        score_keys = sorted({k for p in predictions for n in names for k, v in p.get(f"{n}_scores", {}).items()
                             if isinstance(v, (int, float))})
        sample_rows = [[p["reference"], *[p.get(n, "") for n in names],
                        *[p.get(f"{n}_scores", {}).get(k) for n in names for k in score_keys]] for p in predictions]
        samples = wandb.Table(columns=["reference", *names, *[f"{n}/{k}" for n in names for k in score_keys]],
                              data=sample_rows)
        run.log({"eval/comparison": comparison, "eval/predictions": samples,
                 "eval/chart": wandb.Image(str(paths["chart"]))})
        run.summary.update({f"{n}/{k}": v for n in names for k, v in results[n].items()})
        return Path(run.dir).parent
    finally:
        run.finish()
