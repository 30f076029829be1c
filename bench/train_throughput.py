"""Training-throughput benchmark: this project's trainer against TRL's SFTTrainer, in the same run, on the same model,
rows, row order and hyper-parameters.

    python bench/train_throughput.py                # workloads A, B and S (about 15 min on 2 CPU cores)
    python bench/train_throughput.py --no-trl       # our side only (also what happens when trl is not installed)
    python bench/train_throughput.py --workloads A  # one workload
    python bench/train_throughput.py --quick        # tiny model, our side only, 4 steps (tests/test_bench_train.py)

TRL is NOT a dependency of this project: it is installed only to run this comparison
(`.venv/bin/pip install -c <(echo torch==2.13.0) trl==1.16.0`). Without it, or with --no-trl, only our side runs.

Workloads (fp32, fused AdamW on both sides (--optim), constant learning rate, no warm-up, gradient clipping 1.0,
one process):
  A  a tiny Llama (hidden 256, 4 layers, random weights) on the real Qwen3 vocabulary (151,936 rows; tokenizer from
     `launch.assets.qwen3_tokenizer()`), full fine-tuning, rows packed to 1024 tokens, 2 rows per step;
  B  SmolLM2-135M-Instruct (`launch.assets.smollm2_135m_instruct()`), LoRA r=16 alpha=32 on all linear layers, rows
     packed to 512 tokens, 2 rows per step;
  S  as B, on the corpus's short kinds only (keyword extraction, chit-chat) packed to 1024, the shape of the CPU demo's
     data: attention layouts only (below).
The data: the generated Korean chat corpus of bench/data_pipeline.py (`make_corpus`: keyword extraction, finance
judgement with its long system prompt, RAFT, multi-turn QA, chit-chat), prepared once by our pipeline (assistant-only
labels, overlong samples split, best-fit-decreasing packing) into a cache that every measured process reads.

Each measurement runs in its own process (so its peak RSS is its own) for a fixed number of optimizer steps:
  ours            `train.sft.train_sft(cfg)`, the project's real training path (label-only loss; packed rows on a CPU
                  use attention per sample block, train/kernels/packed_attention.py)
  ours-gc         the same with train.gradient_checkpointing=true (peak memory with and without)
  ours-padded     (B) data.packing=false: right-padded batches of 4 samples (the CPU demo's setting before)
  trl             TRL's SFTTrainer with the same rows in the same order: our prepared rows are handed over with
                  `seq_lengths` (dataset_kwargs.skip_prepare_dataset, packing, padding-free), same model folder,
                  seed, data seed, optimizer, schedule, batch size; gradient checkpointing and bf16, which TRL turns
                  on by default, are off as on our side. TRL flattens a batch into one row (its padding-free format)
                  and computes its fused log-probabilities over every position on a CPU (entropy and accuracy too).
  trl-gc          TRL with gradient checkpointing (its default), the baseline of ours-gc
A callback, the same on both sides, times every optimizer step (from the end of the previous one: data loading,
forward, backward, optimizer, logging) and counts the step's real tokens (the Trainer's non-padding token count). The
first step is a warm-up and is left out of tokens/s and step time. Peak memory is the process's peak RSS (VmHWM) at the
end of training. Each result records whether large CPU tensors were on transparent huge pages ("huge_pages"): our side
turns them on (train/sft.py sets THP_MEM_ALLOC_ENABLE), TRL gets them only if the environment sets it
(`THP_MEM_ALLOC_ENABLE=1 python bench/train_throughput.py ...` gives both sides the same allocator).

Attention layouts (one process per workload, after its runs): the same samples, forward + backward of the label-only
loss, best of 2 alternating repeats: right-padded (SDPA), packed with transformers' block-diagonal mask (SDPA, the
path before train/kernels/packed_attention.py) and packed with attention per sample block ("sdpa_packed").

Results: markdown tables and the loss trajectories on stdout, and a JSON file (default
bench/results/train_throughput[_quick].json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (SEED, load_recipe, machine, prepared_rows, sample_spans, step_timer,  # noqa: E402
                          summarise, trl_available, trl_rows)
from bench.corpus import write_corpus  # noqa: E402
from train.paths import REPO  # noqa: E402

# Both sides: torch's fused AdamW (the same update as adamw_torch, the project's default, in one kernel per parameter
# without temporaries: on a CPU faster and about 300 MiB lower at the optimizer step of workload A). --optim changes it.
OPTIM = "adamw_torch_fused"
WORKLOADS: Dict[str, Dict[str, Any]] = {
    "A": {"title": "tiny Llama (hidden 256, 4 layers) on the Qwen3 vocabulary, full fine-tuning, packed 1024",
          "model": "tiny-llama-qwen3", "method": "full", "max_length": 1024, "batch": 2, "learning_rate": 5e-4,
          "samples": 300, "variants": ["ours", "ours-gc", "trl", "trl-gc"]},
    "B": {"title": "SmolLM2-135M-Instruct, LoRA r=16 all-linear, packed 512",
          "model": "smollm2", "method": "lora", "max_length": 512, "batch": 2, "learning_rate": 2e-4,
          "samples": 300, "variants": ["ours", "ours-gc", "ours-padded", "trl", "trl-gc"], "padded_batch": 4},
    "S": {"title": "SmolLM2-135M-Instruct, LoRA r=16 all-linear, short samples (keyword extraction, chit-chat) packed "
                   "1024: the shape of the CPU demo's data; attention layouts only",
          "model": "smollm2", "method": "lora", "max_length": 1024, "batch": 2, "learning_rate": 2e-4,
          "samples": 300, "kinds": ["keyword", "chit_chat"], "variants": []},
    "quick": {"title": "tiny Llama (hidden 64, 2 layers, 600-token vocabulary), LoRA r=4, packed 256; every step "
                       "trains on all rows",
              "model": "tiny", "method": "lora", "max_length": 256, "batch": "all", "learning_rate": 5e-3,
              "samples": 12, "variants": ["ours"]},
}


# ----------------------------------------------------------------------------------------------------------------------
# Models and recipes
# ----------------------------------------------------------------------------------------------------------------------


def tiny_llama_qwen3(folder: Path) -> Path:
    """Workload A's model: a randomly initialised Llama (hidden 256, 4 layers, 4 heads, 2 KV heads) with the Qwen3
    vocabulary (151,936 rows, untied output layer), fp32 safetensors; the tokenizer stays in its asset folder."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from launch.assets import qwen3_tokenizer

    tok = AutoTokenizer.from_pretrained(str(qwen3_tokenizer()))
    config = LlamaConfig(vocab_size=151936, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=False, bos_token_id=None, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    torch.manual_seed(SEED)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder, safe_serialization=True)
    return folder


def model_paths(workload: str, scratch: Path) -> Dict[str, str]:
    """name_or_path and tokenizer_name_or_path of the workload's model (built or fetched once)."""
    from launch import assets

    model = WORKLOADS[workload]["model"]
    if model == "tiny-llama-qwen3":
        return {"name_or_path": str(tiny_llama_qwen3(scratch / "tiny-llama-qwen3")),
                "tokenizer_name_or_path": str(assets.qwen3_tokenizer())}
    if model == "smollm2":
        return {"name_or_path": str(assets.smollm2_135m_instruct())}
    from launch.assets import tiny_model_dir

    return {"name_or_path": str(tiny_model_dir(scratch / "tiny", hidden=64))}


def recipe(workload: str, variant: str, scratch: Path, steps: int, optim: str = OPTIM) -> Dict[str, Any]:
    """Our recipe (a train/config.py mapping) for one measurement."""
    w = WORKLOADS[workload]
    padded = variant == "ours-padded"
    batch = w["padded_batch"] if padded else w["batch"]
    return {
        "model": {**model_paths(workload, scratch), "dtype": "float32", "attn_implementation": "sdpa"},
        "method": w["method"],
        "lora": {"r": 4 if workload == "quick" else 16, "alpha": 8 if workload == "quick" else 32, "dropout": 0.0,
                 "target_modules": ["all-linear"]},
        "data": {"sources": [{"path": str(scratch / "corpus.jsonl"), "format": "messages"}],
                 "max_length": w["max_length"], "packing": not padded, "overlong": "split",
                 "template": "qwen3" if workload == "A" else "auto", "enable_thinking": False,
                 "validation_split": 0.0, "dedup": "exact", "cache_dir": str(scratch / "data-cache")},
        "train": {"max_steps": steps, "learning_rate": w["learning_rate"], "lr_scheduler": "constant",
                  "warmup_ratio": 0.0, "weight_decay": 0.0, "max_grad_norm": 1.0,
                  "per_device_batch_size": 1 if batch == "all" else batch, "gradient_accumulation_steps": 1,
                  "gradient_checkpointing": variant == "ours-gc", "optim": optim, "logging_steps": 1,
                  "save_steps": 100000, "save_total_limit": 1, "seed": SEED, "sampler": "random", "resume": "never"},
        "output_dir": str(scratch / f"out-{workload}-{variant}"),
    }


# ----------------------------------------------------------------------------------------------------------------------
# The measurement callback, the same on both sides
# ----------------------------------------------------------------------------------------------------------------------


def huge_page_tensors() -> bool:
    """Whether this process's large CPU tensors are on transparent huge pages: with THP_MEM_ALLOC_ENABLE (which
    train/sft.py sets) PyTorch page-aligns them and advises huge pages; glibc alone returns 64-byte-aligned blocks."""
    import torch

    return all(torch.empty(1 << 20).data_ptr() % 4096 == 0 for _ in range(3))


# ----------------------------------------------------------------------------------------------------------------------
# Children: one measurement each
# ----------------------------------------------------------------------------------------------------------------------


def child_prepare(workload: str, scratch: Path, steps: int, optim: str) -> Dict[str, Any]:
    """Build the model and the prepared rows of every variant once, so that no measured process builds them."""
    out = {}
    for variant in ["ours"] + [v for v in WORKLOADS[workload]["variants"] if v == "ours-padded"]:  # the others
        # (ours-gc, trl, trl-gc, the attention layouts) read ours' rows
        cfg = load_recipe(recipe(workload, variant, scratch, steps, optim), scratch / f"prepare-{variant}.yaml")
        _, data = prepared_rows(cfg)
        out[variant] = {"rows": len(data.train), "packing": data.report.packing, "cache": str(data.path)}
    return out


def child_ours(workload: str, variant: str, scratch: Path, steps: int, optim: str) -> Dict[str, Any]:
    spec = recipe(workload, variant, scratch, steps, optim)
    shutil.rmtree(spec["output_dir"], ignore_errors=True)  # a fresh run, never a resumed one
    cfg = load_recipe(spec, scratch / f"recipe-{workload}-{variant}.yaml")
    if WORKLOADS[workload]["batch"] == "all":  # every step sees all rows: its loss does not depend on the row order
        _, data = prepared_rows(cfg)
        cfg.train.per_device_batch_size = len(data.train)
    from train.sft import train_sft

    timer = step_timer()
    trainer = train_sft(cfg, callbacks=[timer])[0]
    return {"side": "ours", "variant": variant, "steps": timer.steps, "peak_rss_kb": timer.peak_rss_kb,
            "huge_pages": huge_page_tensors(),
            "rss_at_start_kb": timer.rss_at_start_kb, "attention": trainer.model.config._attn_implementation,
            "per_device_batch_size": cfg.train.per_device_batch_size,
            "recipe": str(scratch / f"recipe-{workload}-{variant}.yaml")}


def child_trl(workload: str, variant: str, scratch: Path, steps: int, optim: str) -> Dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    w = WORKLOADS[workload]
    cfg = load_recipe(recipe(workload, "ours", scratch, steps, optim), scratch / f"recipe-{workload}-trl.yaml")
    tokenizer, data = prepared_rows(cfg)  # our rows, from the cache the prepare step built

    rows = trl_rows(data.train)
    transformers.set_seed(cfg.train.seed)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    peft_config = None
    if w["method"] == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                 target_modules="all-linear", bias="none", task_type="CAUSAL_LM")
    t = cfg.train
    args = SFTConfig(
        output_dir=str(scratch / f"out-{workload}-trl"), max_steps=t.max_steps, learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler, warmup_steps=0, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        per_device_train_batch_size=t.per_device_batch_size, gradient_accumulation_steps=1, optim=t.optim,
        activation_checkpointing=variant == "trl-gc", gradient_checkpointing=variant == "trl-gc", bf16=False,
        fp16=False, use_cpu=True,
        seed=t.seed, data_seed=t.seed, logging_steps=1, logging_first_step=True, save_strategy="no", report_to=[],
        dataloader_num_workers=0, max_length=cfg.data.max_length, packing=True, padding_free=True,
        dataset_kwargs={"skip_prepare_dataset": True}, disable_tqdm=True)
    timer = step_timer()
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[timer])
    trainer.train()
    return {"side": "trl", "variant": variant, "steps": timer.steps, "peak_rss_kb": timer.peak_rss_kb,
            "huge_pages": huge_page_tensors(),
            "rss_at_start_kb": timer.rss_at_start_kb, "attention": trainer.model.config._attn_implementation,
            "per_device_batch_size": t.per_device_batch_size}


def child_attention(workload: str, scratch: Path, steps: int, optim: str, repeats: int = 2) -> Dict[str, Any]:
    """Packed against padded, before and after, on the same samples: forward + backward of the label-only loss on
    `batch` packed rows of the prepared data, picked at random (seeded), in three layouts, alternating, `repeats` times, the
    best time of each (robust to a shared machine's bursts): the rows' samples right-padded in one batch (SDPA, what
    data.packing=false trains on), the packed rows with transformers' block-diagonal mask (SDPA: before) and with
    attention per sample block ("sdpa_packed": after)."""
    import torch

    from train.data.packing import Collator
    from train.model import load_model
    from train.kernels.packed_attention import PACKED_SDPA
    from train.kernels.fused_loss import label_only_loss

    cfg = load_recipe(recipe(workload, "ours", scratch, steps, optim), scratch / f"recipe-{workload}-attention.yaml")
    tokenizer, data = prepared_rows(cfg)
    import random

    pick = random.Random(SEED).sample(range(len(data.train)), WORKLOADS[workload]["batch"])  # like a training step
    rows = [data.train[i] for i in pick]
    samples = []
    for row in rows:
        samples += [{"input_ids": row["input_ids"][a:b], "labels": row["labels"][a:b]}
                    for a, b in sample_spans(row["position_ids"])]
    batches = {"padded": Collator(tokenizer.pad_token_id, packing=False)(samples),
               "packed": Collator(tokenizer.pad_token_id, packing=True)(rows)}
    model = load_model(cfg, tokenizer).train()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layouts = {"padded": ("padded", "sdpa"), "packed, block mask (before)": ("packed", "sdpa"),
               "packed, per sample (after)": ("packed", PACKED_SDPA)}
    best = {name: float("inf") for name in layouts}
    for _ in range(repeats):
        for name, (layout, attention) in layouts.items():
            base.set_attn_implementation(attention)
            batch = batches[layout]
            items = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))
            start = time.perf_counter()
            label_only_loss(model, batch, items).backward()
            best[name] = min(best[name], time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
    tokens = sum(len(s["input_ids"]) for s in samples)
    return {"side": "ours", "samples": len(samples), "rows": len(rows), "tokens": tokens,
            "padded_slots": int(batches["padded"]["input_ids"].numel()),
            "layouts": {name: {"seconds": round(t, 3), "tokens_per_s": round(tokens / t, 1)}
                        for name, t in best.items()}}


def _child_main(spec: Dict[str, Any]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["WANDB_DISABLED"] = "true"
    scratch, result = Path(spec["scratch"]), Path(spec["result"])
    kind, workload, steps, optim = spec["kind"], spec["workload"], spec["steps"], spec["optim"]
    load_before = os.getloadavg()[0]
    if kind == "prepare":
        out = child_prepare(workload, scratch, steps, optim)
    elif kind == "attention":
        out = child_attention(workload, scratch, steps, optim)
    elif kind.startswith("trl"):
        out = child_trl(workload, kind, scratch, steps, optim)
    else:
        out = child_ours(workload, kind, scratch, steps, optim)
    out["load_average"] = [load_before, os.getloadavg()[0]]  # 1-minute load before and after: the machine is shared
    result.write_text(json.dumps(out, ensure_ascii=False, indent=1), encoding="utf-8")


def run_child(kind: str, workload: str, scratch: Path, steps: int, optim: str, timeout: int = 1800) -> Dict[str, Any]:
    """Run one measurement in a fresh Python process; return its result dict (with its wall time)."""
    result = scratch / f"result-{workload}-{kind}.json"
    spec = {"kind": kind, "workload": workload, "scratch": str(scratch), "result": str(result), "steps": steps,
            "optim": optim}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{workload}/{kind} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(result.read_text(encoding="utf-8"))
    out["process_seconds"] = round(time.perf_counter() - start, 1)
    shutil.rmtree(scratch / f"out-{workload}-{kind}", ignore_errors=True)  # saved weights: not needed
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------------------------------


def trl_baseline(row: Dict[str, Any], rows: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The TRL run an our-side row is compared with: TRL with gradient checkpointing for ours-gc (when measured),
    else TRL as configured like ours."""
    trl = {r["variant"]: r for r in rows if r["side"] == "trl"}
    if row["side"] == "trl":
        return None
    return trl.get("trl-gc") if row["variant"].endswith("-gc") and "trl-gc" in trl else trl.get("trl")


def markdown(workload: str, rows: List[Dict[str, Any]]) -> str:
    head = ("| workload | run | attention | tokens/step | tokens/s | step s (median) | CPU s/step | peak RSS MiB "
            "| tokens/s ÷ TRL | peak RSS ÷ TRL | load avg |")
    lines = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for r in rows:
        ratio = mem = "—"
        base = trl_baseline(r, rows)
        if base is not None and base["tokens_per_s"] and base["peak_rss_mib"]:
            ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}× ({base['variant']})"
            mem = f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f} ({base['variant']})"
        lines.append(f"| {workload} | {r['variant']} | {r['attention']} | {r['tokens_per_step']:,} | "
                     f"{r['tokens_per_s']:,.1f} | {r['step_seconds']:.2f} | {r['cpu_seconds_per_step']:.2f} | "
                     f"{r['peak_rss_mib']:,} | {ratio} | {mem} | {r['load']} |")
    return "\n".join(lines)


def attention_table(workload: str, attention: Dict[str, Any]) -> str:
    head = "| workload | layout | seconds (fwd + bwd, best of 2) | tokens/s |"
    lines = [f"Attention layouts, workload {workload}: {attention['tokens']:,} tokens in {attention['samples']} "
             f"samples, {attention['rows']} packed rows or {attention['padded_slots']:,} padded slots:", "", head,
             "|---|---|---|---|"]
    for name, r in attention["layouts"].items():
        lines.append(f"| {workload} | {name} | {r['seconds']:.2f} | {r['tokens_per_s']:,.1f} |")
    return "\n".join(lines)


def loss_table(workload: str, rows: List[Dict[str, Any]]) -> str:
    head = "| step | " + " | ".join(r["variant"] for r in rows) + " |"
    lines = [f"Loss per optimizer step, workload {workload}:", "", head,
             "|" + "|".join("---" for _ in range(len(rows) + 1)) + "|"]
    for i in range(max(len(r["losses"]) for r in rows)):
        cells = [f"{r['losses'][i]:.4f}" if i < len(r["losses"]) and r["losses"][i] is not None else "—"
                 for r in rows]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="A,B,S", help="comma-separated: A, B, S")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is a warm-up)")
    parser.add_argument("--quick", action="store_true", help="tiny model, our side only, 4 steps")
    parser.add_argument("--no-trl", action="store_true", help="measure our side only")
    parser.add_argument("--variants", default=None, help="comma-separated subset of the runs, e.g. ours,trl")
    parser.add_argument("--optim", default=OPTIM, help="train.optim on both sides (default: %(default)s)")
    parser.add_argument("--no-attention", action="store_true", help="skip the packed/padded attention layouts")
    parser.add_argument("--out", default=None, help="JSON result (default bench/results/train_throughput[_quick].json)")
    parser.add_argument("--scratch", default=None, help="folder for models, data and outputs (default: a temp folder)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child_main(json.loads(args.child))
        return 0

    workloads = ["quick"] if args.quick else args.workloads.split(",")
    steps = 4 if args.quick else args.steps
    use_trl = not args.no_trl and not args.quick and trl_available()
    if not args.no_trl and not args.quick and not use_trl:
        print("trl is not installed: measuring our side only. For the comparison (benchmark only, not a project "
              "dependency): .venv/bin/pip install -c <(echo torch==2.13.0) trl==1.16.0", flush=True)
    out_path = Path(args.out) if args.out else REPO / "bench" / "results" / (
        "train_throughput_quick.json" if args.quick else "train_throughput.json")
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench-train-"))
    scratch.mkdir(parents=True, exist_ok=True)
    result: Dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "steps": steps,
                              "optim": args.optim,
                              "command": " ".join(["python", "bench/train_throughput.py"] +
                                                  list(argv if argv is not None else sys.argv[1:])),
                              "workloads": {}}
    try:
        tables = []
        for workload in workloads:
            w = WORKLOADS[workload]
            work = scratch / workload
            work.mkdir(parents=True, exist_ok=True)
            kinds = write_corpus(work / "corpus.jsonl", w["samples"], kinds=w.get("kinds"))
            variants = [v for v in w["variants"] if (use_trl or not v.startswith("trl"))
                        and (args.variants is None or v in args.variants.split(","))]
            prepared = {} if args.quick else run_child("prepare", workload, work, steps, args.optim)
            runs = [run_child(v, workload, work, steps, args.optim) for v in variants]
            rows = [summarise(r) for r in runs]
            attention = None if args.quick or args.no_attention else run_child("attention", workload, work, steps,
                                                                                 args.optim)
            parts = [markdown(workload, rows), loss_table(workload, rows)] if rows else []
            parts += [attention_table(workload, attention)] if attention else []
            print(f"\n{workload}: {w['title']}\n\n" + "\n\n".join(parts), flush=True)
            tables.append("\n\n".join(parts))
            result["workloads"][workload] = {"title": w["title"], "corpus": kinds, "prepared": prepared,
                                             "rows": rows, "runs": runs, "attention": attention,
                                             "scratch": str(work)}
        result["table"] = "\n\n".join(tables)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
        print(f"\nwritten: {out_path}")
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
