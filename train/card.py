"""The model card: a README.md in the output folder saying what was trained, on what data, how, and how it went.

Its front matter follows the hub's model-card metadata: `base_model` is a hub id (the hub rejects a local path), so a
model loaded from a folder is named by the hub id that folder came from when that is known (`hub_id`), and the key is
left out otherwise; the body still names the folder the run used.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from train.config import Config, redact, to_dict
from train.data.report import DataReport
from train.methods import method_of


HUB_CACHE_SNAPSHOT = re.compile(r"models--([^/]+)--([^/]+)/snapshots/[^/]+/?$")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_id(name_or_path: str) -> Optional[str]:
    """The hub id behind `model.name_or_path`, or None when it is a local folder of unknown origin:
    - a name that is not a local path and looks like `org/name` is the hub id itself;
    - a snapshot folder of the hub cache (`.../models--Qwen--Qwen3-8B/snapshots/<sha>`) names it;
    - a folder written by `python -m launch.assets` records it in ASSET_SOURCE.json (`hub_id`)."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return name_or_path if HUB_ID.match(name_or_path) else None
    match = HUB_CACHE_SNAPSHOT.search(path.resolve().as_posix())
    if match:
        return f"{match.group(1)}/{match.group(2)}"
    source = path / "ASSET_SOURCE.json"
    if source.is_file():
        try:
            return json.loads(source.read_text(encoding="utf-8")).get("hub_id")
        except ValueError:
            return None
    return None


def _whole(value) -> str:
    """A token count from the report: percentiles are interpolated (57.5), a count of tokens is a whole number."""
    return "?" if value is None else f"{float(value):.0f}"


def write_model_card(cfg: Config, out_dir: Path, report: DataReport, metrics: Dict[str, Any],
                     tokenizer_changes: Optional[Dict[str, Any]] = None, command: Optional[List[str]] = None) -> Path:
    out_dir = Path(out_dir)
    recipe_yaml = OmegaConf.to_yaml(OmegaConf.create(redact(to_dict(cfg))))
    method = method_of(cfg)
    lengths = report.token_lengths
    loading = (
        f"from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained(\"{out_dir}\")"
        if method.adapter else
        f"from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained(\"{out_dir}\")"
    )
    base_hub_id = hub_id(cfg.model.name_or_path)
    lines = [
        "---",
        f"base_model: {base_hub_id}" if base_hub_id else None,
        f"library_name: {method.library}",
        "tags: [sft, " + cfg.method + "]",
        "---",
        f"# {out_dir.name}",
        "",
        f"{method.title} of `{cfg.model.name_or_path}`"
        + (f" ({base_hub_id} on the hub)." if base_hub_id and base_hub_id != cfg.model.name_or_path else "."),
        "",
        "## Training",
        f"- method: {cfg.method}" + (f" (r={cfg.lora.r}, alpha={cfg.lora.alpha}, dropout={cfg.lora.dropout}, "
                                     f"targets={list(cfg.lora.target_modules)})" if method.adapter else ""),
        f"- steps: {metrics.get('steps')}, world size: {metrics.get('world_size')}, "
        f"runtime: {metrics.get('train_runtime_s')} s",
        f"- final train loss: {metrics.get('train_loss'):.4f}" if metrics.get("train_loss") is not None else "",
        f"- eval loss: {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else "",
        f"- early stopping: the saved model is step {metrics['best_step']} (best eval loss "
        f"{metrics['best_eval_loss']:.4f}); training "
        f"{'stopped early' if metrics.get('stopped_early') else 'ran to the end'}"
        if metrics.get("best_step") is not None else "",
        f"- trainable parameters: {metrics.get('trainable_parameters'):,} of {metrics.get('total_parameters'):,}",
        f"- chat template: {(tokenizer_changes or {}).get('template', cfg.data.template)}, "
        f"loss on: {cfg.data.train_on} turns",
        "",
        "## Data",
        *[f"- `{s['path']}` ({s['format']}, weight {s['weight']}): {s['records']} records" for s in report.sources],
        f"- conversations: {report.train_conversations} train, {report.eval_conversations} eval",
        f"- duplicates removed: {report.duplicates.get('exact_removed', 0)} exact, "
        f"{report.duplicates.get('near_removed', 0)} near",
        f"- rejected records by reason: "
        f"{json.dumps(report.rejected_by_reason, ensure_ascii=False) if report.rejected else 'none'}",
        f"- token length p50/p95/max: {_whole(lengths.get('p50'))}/{_whole(lengths.get('p95'))}/"
        f"{_whole(lengths.get('max'))} "
        f"(max_length {report.max_length})",
        f"- packing: {'on' if cfg.data.packing else 'off'}, efficiency {report.packing_efficiency:.3f}",
        "",
        "## Use",
        "```python",
        loading,
        "```",
        "",
        "## Reproduce",
        "```bash",
        "python " + " ".join(shlex.quote(a) for a in redact(command or ["train/sft.py", "--config", "<recipe>"])),
        "```",
        "",
        "## Recipe (resolved, secrets redacted)",
        "```yaml",
        recipe_yaml.rstrip(),
        "```",
        "",
        "Files: `run_config.yaml`, `metrics.jsonl`, `loss_curve.png`, `data_report.md`.",
    ]
    path = out_dir / "README.md"
    path.write_text("\n".join(line for line in lines if line is not None) + "\n", encoding="utf-8")
    return path


def write_merged_card(cfg: Config, adapter_dir: Path, out_dir: Path, result, dtype: str) -> Path:
    """README.md of a merged folder (python -m launch merge): what was merged onto what, how to load and serve it, and
    the adapter's own card (the training run: data, steps, losses) below."""
    method = method_of(cfg)
    adapter_card = Path(adapter_dir) / "README.md"
    body = adapter_card.read_text(encoding="utf-8") if adapter_card.is_file() else ""
    if body.startswith("---"):  # the adapter card's front matter describes the adapter, not this folder
        body = body.split("---", 2)[2].lstrip()
    onto = ("the base as training saw it: each 4-bit layer quantised and dequantised as bitsandbytes loaded it "
            f"({cfg.qlora.quant_type}, double quantisation {'on' if cfg.qlora.double_quant else 'off'})"
            if method.quantized_base else "the base's weights")
    lines = [
        "---",
        f"base_model: {cfg.model.name_or_path}",
        "library_name: transformers",
        f"tags: [sft, {cfg.method}, merged]",
        "---",
        f"# {Path(out_dir).name}",
        "",
        f"`{cfg.model.name_or_path}` with the {method.title} adapter of `{adapter_dir}` merged into its weights "
        f"({dtype}): a plain transformers model, no peft needed.",
        "",
        "## Merge",
        f"- {len(result.merged_modules)} weights updated (W + alpha/r * B @ A, in float32, rounded once to {dtype}) "
        f"onto {onto}",
        f"- {len(result.replaced)} tensors taken from the adapter (modules_to_save, trained biases)"
        + (f"; config changes: {result.config_changes}" if result.config_changes else ""),
        f"- {len(result.shards)} shard(s), {result.total_bytes / 2**30:.2f} GiB, streamed one shard at a time",
        "",
        "## Use",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"model = AutoModelForCausalLM.from_pretrained(\"{out_dir}\")",
        f"tokenizer = AutoTokenizer.from_pretrained(\"{out_dir}\")",
        "```",
        f"vLLM serves this folder as it is: `vllm serve {out_dir}`. GGUF for llama.cpp and Ollama: "
        f"`python -m launch export --config <recipe> --gguf --model {out_dir}`.",
        "",
        "## The adapter's model card" if body else "",
        "",
        body,
    ]
    path = Path(out_dir) / "README.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path
