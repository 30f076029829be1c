"""`python -m launch eval`, the whole pipeline: the held-out conversations of the prepared data, prompts rendered by
the training template, greedy generation and the training loss for the base and the fine-tuned model (on the local
GPU in the training dtype when there is one, train/device.py), scores (train/eval/scores.py), and the report
(train/eval/report.py), printed and written to output_dir/eval/."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch

from train.config import Config, ConfigError
from train.eval import generate as gen
from train.eval import report as rep
from train.eval import scores as ev
from train.tracking import log_eval_to_mlflow, log_eval_to_tensorboard


@dataclass
class EvalOptions:
    adapter: Optional[str] = None  # LoRA adapter folder (default: output_dir)
    model: Optional[str] = None  # a full model folder instead of base + adapter
    base: bool = False  # also score the base model (for LoRA: the adapter disabled)
    limit: int = 0  # samples, taken evenly from each eval file (0 = all)
    max_new_tokens: int = 128
    batch_size: int = 8


def evaluate(cfg: Config, tokenizer, changes: Dict, options: EvalOptions) -> Dict[str, Path]:
    """Run the evaluation and write its report; returns the report's paths. User mistakes raise ConfigError."""
    from train.data.labels import tokenize_conversation
    from train.data.packing import Collator
    from train.data.prepare import load_or_build
    from train.data.templates import generation_prompt
    from train.device import eval_device_map
    from train.kernels.attention import check_available
    from train.methods import method_of
    from train.model import load_base_model, resize_for_tokenizer

    problem = check_available(cfg.model.attn_implementation, torch.cuda.is_available())
    if problem:
        raise ConfigError(problem)
    data = load_or_build(cfg, tokenizer, is_main=True)
    conv_file = data.path / "eval_conversations.jsonl"
    if data.eval is None or not conv_file.exists():
        raise ConfigError("no held-out split to evaluate on: set data.validation_split > 0 or data.eval_sources")
    records = [json.loads(line) for line in conv_file.read_text(encoding="utf-8").splitlines()]
    records = [records[i] for i in gen.balanced_subset([r["file"] for r in records], options.limit)]
    conversations = [r["messages"] for r in records]
    rows = [tokenize_conversation(tokenizer, messages, cfg.data) for messages in conversations]
    prompts, references, tasks = [], [], []
    for messages in conversations:
        prompt_messages, reference = gen.split_prompt(messages)
        prompts.append(generation_prompt(tokenizer, prompt_messages, cfg.data))
        references.append(reference)
        tasks.append(ev.task_of(prompt_messages, reference))

    encoder, warnings = load_encoder(cfg, references)
    from train.eval.metrics import morphemes_warning

    warnings += [w for w in [morphemes_warning()] if w]
    torch.manual_seed(cfg.train.seed)
    collator = Collator(pad_token_id=tokenizer.pad_token_id, packing=False)  # one conversation per row

    def score(model, label: str):
        t0 = time.time()
        preds = gen.generate(model, tokenizer, prompts, max_new_tokens=options.max_new_tokens,
                             batch_size=options.batch_size, stop_ids=[changes.get("end_of_turn_id")], progress=label)
        per_sample, metrics = ev.score_all(preds, references, tasks, encoder)
        metrics["eval_loss"] = gen.mean_token_loss(model, rows, collator)
        print(f"  {label}: {len(preds)} samples in {time.time() - t0:.1f}s", flush=True)
        return metrics, preds, per_sample

    # on the local GPU when there is one (in the training dtype), else on the CPU
    device_map = eval_device_map(torch.cuda.is_available(), int(os.environ.get("LOCAL_RANK", 0)))
    print(f"evaluating on {'cuda:%d' % device_map[''] if device_map else 'the CPU'} in {cfg.model.dtype}", flush=True)

    def load(name_or_path: str):
        cfg.model.name_or_path = name_or_path
        model = load_base_model(cfg, device_map=device_map)
        resize_for_tokenizer(model, tokenizer)
        return model

    base_path = cfg.model.name_or_path
    runs = []  # (label, a function that returns the model)
    adapter = Path(options.adapter or cfg.output_dir)
    full_model = bool(options.model) or not method_of(cfg).adapter
    if full_model:
        tuned_path = options.model or cfg.output_dir
        if not (Path(tuned_path) / "config.json").exists():
            raise ConfigError(f"no model in {tuned_path} (config.json missing). Train first, or pass --model DIR")
        if options.base:
            runs.append(("base", lambda: load(base_path)))
        runs.append(("fine-tuned", lambda: load(tuned_path)))
    else:
        if not (adapter / "adapter_config.json").exists():
            raise ConfigError(f"no LoRA adapter in {adapter} (adapter_config.json missing). Train first, or pass "
                              f"--adapter DIR")
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(load(base_path), str(adapter))
        if options.base:
            runs.append(("base", lambda: peft_model))  # scored with the adapter disabled
        runs.append(("fine-tuned", lambda: peft_model))

    results, predictions = {}, [{"reference": r} for r in references]
    for label, get_model in runs:
        model = get_model()
        if label == "base" and hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                results[label], preds, scores = score(model, label)
        else:
            results[label], preds, scores = score(model, label)
        for p, pred, s in zip(predictions, preds, scores):
            p.update({label: pred, f"{label}_scores": s})
        del model

    meta = {"model": base_path, "adapter": None if full_model else str(adapter),
            "samples": len(prompts), "template": changes.get("template", cfg.data.template),
            "tasks": dict(Counter(tasks)), "embedding_model": cfg.eval.embedding_model, "warnings": warnings}
    paths = rep.write_eval_report(Path(cfg.output_dir) / "eval", results, predictions, meta)
    wandb_dir = rep.log_to_wandb(cfg, results, predictions, paths, meta)
    report_markdown = paths["md"].read_text(encoding="utf-8")
    tensorboard = log_eval_to_tensorboard(cfg, results, report_markdown)
    mlflow_run = log_eval_to_mlflow(cfg, results, report_markdown)
    print()
    print(rep.comparison_table(results))
    for warning in warnings:
        print(f"\nwarning: {warning}")
    print(f"\nreport: {paths['md']}  chart: {paths['chart']}  predictions: {paths['predictions']}")
    if wandb_dir:
        print(f"W&B ({cfg.tracking.wandb_mode}): {wandb_dir}")
    if tensorboard:
        print(f"TensorBoard: {tensorboard}")
    if mlflow_run:
        print(f"MLflow: run {mlflow_run} in {os.environ['MLFLOW_TRACKING_URI']}")
    return paths


def load_encoder(cfg: Config, references):
    """(the sentence encoder named by eval.embedding_model or None for `none`, [warnings]). An offline asset name is
    fetched by launch.assets; anything else is a folder or hub id."""
    from launch.assets import ENCODERS
    from train.eval.metrics import SentenceEncoder

    name = cfg.eval.embedding_model.strip()
    if name.lower() == "none":
        return None, []
    path = str(ENCODERS[name]()) if name in ENCODERS else name
    try:
        encoder = SentenceEncoder(path, max_length=cfg.eval.embedding_max_length, name=name)
    except (OSError, ValueError) as err:
        raise ConfigError(f"eval.embedding_model={name}: cannot load it as a sentence encoder ({err}). Use "
                          f"{' or '.join(ENCODERS)} (fetched offline), a local model folder, a hub id on a machine "
                          f"with hub access, or none to skip the cosine metric") from None
    warning = encoder.language_warning(references)
    return encoder, [warning] if warning else []
