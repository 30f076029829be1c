"""GPU throughput benchmark: tokens/s per GPU, model FLOPs utilisation (MFU) and peak memory of this project's trainer
and of TRL's SFTTrainer, in the same run, on 8B architectures with random weights.

    python bench/gpu_throughput.py                                   # on one GPU: Llama-3-8B and Qwen3-8B, LoRA, QLoRA
                                                                     # and full (ZeRO-3 + CPU offload), ours and TRL
    python bench/gpu_throughput.py --models qwen3-8b --methods lora  # a subset
    python bench/gpu_throughput.py --models tiny --seq 256 --steps 4 # on a CPU: the harness with a tiny model
                                                                     # (tests/test_bench_gpu.py runs this)

What runs (each measurement in its own process, one GPU, one process: `n_gpu` is recorded; the parent process never
touches the GPU, so all its memory is the measured run's):
- Models: the architecture of configs/models/<name>.json (the public config.json shape) with random weights, written
  once as bf16 safetensors with the model's tokenizer asset (launch/assets.py), so nothing comes from a hub. `tiny` is
  the 2-layer Llama of launch/assets.py (tiny_model_dir).
- Data: the generated Korean corpus of bench/data_pipeline.py (keyword extraction, finance judgement, RAFT, multi-turn
  QA, chit-chat: the length distribution of our users' data), prepared by our pipeline (assistant-only labels, packed
  to --seq tokens). TRL trains on the same packed rows in the same order (bench/train_throughput.py's hand-over).
- Same hyper-parameters on both sides: learning rate, constant schedule, batch 1 x --seq tokens, optimizer, seed,
  LoRA r=16 alpha=32 on all linear layers, QLoRA nf4 with double quantisation and bf16 compute. Full fine-tuning of an
  8B model on one GPU: 8-bit AdamW (bitsandbytes) and gradient checkpointing, so that it fits 80 GB.
- `--repeat-batch`: the corpus is cut to the samples that fill one packed row, so every step trains on the same row
  (the loss of a repeated batch must fall; scripts/gpu_check.sh uses it).
- Each side runs its defaults otherwise: TRL's SFTConfig turns on gradient checkpointing and bf16; ours uses the
  recipe keys as set here (`--ours-gc` turns checkpointing on for ours too). `--trl-variants` adds TRL without
  checkpointing.

Numbers: tokens/s per GPU over the steps after the first (warm-up); MFU = model FLOPs per token x tokens/s / the
device's peak dense bf16 FLOP/s, where model FLOPs per token = k * N + 6 * L * d_attn * S: N the parameters of the
decoder's linear layers and the output layer, k = 6 for full fine-tuning and 4 for LoRA/QLoRA (frozen weights need no
weight gradient), L layers, d_attn = heads x head_dim, S = sum(sample length^2) / sum(sample length) (causal attention
within each packed sample, forward and backward). On a CPU the denominator is the measured fp32 matmul rate. Peak
memory: torch.cuda.max_memory_allocated on a GPU (and reserved), the process's peak RSS on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common as tt  # noqa: E402
from bench.common import machine, trl_available  # noqa: E402
from bench.corpus import write_corpus  # noqa: E402
from train.methods import METHODS, NAMES  # noqa: E402
from train.plan.planner import GPUS, gpu_key  # noqa: E402
from train.paths import MODELS_DIR, REPO  # noqa: E402

MODELS = {"llama3-8b": "llama3_tokenizer", "qwen3-8b": "qwen3_tokenizer", "tiny": None}


def model_config(name: str):
    """The transformers config of configs/models/<name>.json."""
    from transformers import AutoConfig

    shape = {k: v for k, v in json.loads((MODELS_DIR / f"{name}.json").read_text()).items()
             if not k.startswith("_")}
    return AutoConfig.for_model(shape.pop("model_type"), **shape)


def build_model(name: str, scratch: Path) -> Path:
    """A folder with config.json, random bf16 weights (safetensors) and the tokenizer; built once (on a GPU in a child
    process, `child_build`, so that this process never holds GPU memory)."""
    if name == "tiny":
        from launch.assets import tiny_model_dir

        return tiny_model_dir(scratch / "tiny", hidden=64)
    folder = scratch / name
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launch import assets

    config = model_config(name)
    torch.manual_seed(tt.SEED)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(getattr(assets, MODELS[name])())).save_pretrained(folder)
    return folder


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def flash_attention() -> str:
    import importlib.util

    return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"


def recipe(spec: Dict[str, Any], variant: str) -> Dict[str, Any]:
    """Our recipe for one measurement (a train/config.py mapping)."""
    gpu, method = spec["gpu"], spec["method"]
    full_on_gpu = gpu and METHODS[method].trains_base  # 8B full fine-tuning on one 80 GB GPU: 8-bit AdamW, checkpointing
    return {
        # "sdpa": train/kernels/attention.py picks the attention for packed rows (FlashAttention when installed)
        "model": {"name_or_path": spec["model_dir"], "dtype": "bfloat16" if gpu else "float32",
                  "attn_implementation": "sdpa"},
        "method": method,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["all-linear"]},
        "qlora": {"compute_dtype": "bfloat16" if gpu else "float32"},
        "data": {"sources": [{"path": spec["corpus"], "format": "messages"}], "max_length": spec["seq"],
                 "packing": True, "overlong": "split", "validation_split": 0.0, "dedup": "exact",
                 "enable_thinking": False, "cache_dir": str(Path(spec["scratch"]) / "data-cache")},
        "train": {"max_steps": spec["steps"], "learning_rate": 1e-5 if METHODS[method].trains_base else 1e-4,
                  "lr_scheduler": "constant", "warmup_ratio": 0.0, "weight_decay": 0.0, "max_grad_norm": 1.0,
                  "per_device_batch_size": 1, "gradient_accumulation_steps": 1,
                  "optim": "adamw_8bit" if full_on_gpu else "adamw_torch_fused",
                  "gradient_checkpointing": variant.endswith("-gc") or full_on_gpu, "logging_steps": 1,
                  "save_steps": 100000,
                  "save_total_limit": 1, "seed": tt.SEED, "sampler": "random", "resume": "never"},
        "output_dir": str(Path(spec["scratch"]) / f"out-{spec['key']}-{variant}"),
    }


def device_peak():
    """A callback that records the peak accelerator memory of training (GPU only; 0 on a CPU)."""
    from transformers import TrainerCallback

    class Peak(TrainerCallback):
        def __init__(self):
            self.allocated = self.reserved = 0

        def on_train_begin(self, args, state, control, **kwargs):
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

        def on_train_end(self, args, state, control, **kwargs):
            import torch

            if torch.cuda.is_available():
                self.allocated = torch.cuda.max_memory_allocated()
                self.reserved = torch.cuda.max_memory_reserved()

    return Peak()


def child_ours(spec: Dict[str, Any], variant: str) -> Dict[str, Any]:
    import shutil

    from train.sft import train_sft

    cfg_dict = recipe(spec, variant)
    shutil.rmtree(cfg_dict["output_dir"], ignore_errors=True)
    cfg = tt.load_recipe(cfg_dict, Path(spec["scratch"]) / f"recipe-{spec['key']}-{variant}.yaml")
    timer, peak = tt.step_timer(), device_peak()
    trainer, _, data, _ = train_sft(cfg, callbacks=[timer, peak])
    from train.kernels.packed_attention import kernel_description

    attention = trainer.model.config._attn_implementation
    return {"side": "ours", "variant": variant, "steps": timer.steps, "peak_rss_kb": timer.peak_rss_kb,
            "rss_at_start_kb": timer.rss_at_start_kb, "gpu_allocated": peak.allocated, "gpu_reserved": peak.reserved,
            "attention": attention, "n_gpu": trainer.args.n_gpu, "world_size": trainer.args.world_size,
            "attention_kernel": kernel_description(attention, trainer.args.device.type, cfg.model.dtype),
            "label_fraction": data.report.label_fraction(cfg.data.max_length), "rows": len(data.train),
            "recipe": str(Path(spec["scratch"]) / f"recipe-{spec['key']}-{variant}.yaml")}


def child_trl(spec: Dict[str, Any], variant: str) -> Dict[str, Any]:
    """TRL's SFTTrainer on our packed rows (same order), its defaults otherwise; `trl-nogc`: without checkpointing."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, set_seed
    from trl import SFTConfig, SFTTrainer

    cfg = tt.load_recipe(recipe(spec, "ours"), Path(spec["scratch"]) / f"recipe-{spec['key']}-trl.yaml")
    tokenizer, data = tt.prepared_rows(cfg)
    train = tt.trl_rows(data.train)
    gpu, method = spec["gpu"], spec["method"]
    dtype = torch.bfloat16 if gpu else torch.float32
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype) if METHODS[method].quantized_base else None
    set_seed(tt.SEED)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path, dtype=dtype, quantization_config=quant,
                                                 attn_implementation=flash_attention() if gpu else "sdpa",
                                                 device_map={"": 0} if gpu else None)
    peft_config = None
    if METHODS[method].adapter:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", bias="none",
                                 task_type="CAUSAL_LM")
    t = cfg.train
    args = SFTConfig(
        output_dir=str(Path(spec["scratch"]) / f"out-{spec['key']}-{variant}"), max_steps=t.max_steps,
        learning_rate=t.learning_rate, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, per_device_train_batch_size=1, gradient_accumulation_steps=1, optim=t.optim,
        bf16=gpu, use_cpu=not gpu, seed=t.seed, data_seed=t.seed, logging_steps=1, save_strategy="no",
        report_to=[], dataloader_num_workers=0, max_length=cfg.data.max_length, packing=True, padding_free=True,
        dataset_kwargs={"skip_prepare_dataset": True}, disable_tqdm=True,
        **({"gradient_checkpointing": False} if variant == "trl-nogc" else {}))  # else TRL's default (on)
    timer, peak = tt.step_timer(), device_peak()
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[timer, peak])
    trainer.train()
    return {"side": "trl", "variant": variant, "steps": timer.steps, "peak_rss_kb": timer.peak_rss_kb,
            "rss_at_start_kb": timer.rss_at_start_kb, "gpu_allocated": peak.allocated, "gpu_reserved": peak.reserved,
            "attention": trainer.model.config._attn_implementation, "n_gpu": trainer.args.n_gpu,
            "gradient_checkpointing": bool(args.gradient_checkpointing)}


def run_child(spec: Dict[str, Any], variant: str, timeout: int) -> Dict[str, Any]:
    """One measurement in a fresh process (`variant` "build": the model folder, `child_build`)."""
    result = Path(spec["scratch"]) / f"result-{spec['key']}-{variant}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child",
           json.dumps({**spec, "variant": variant, "result": str(result)})]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false",
           "WANDB_DISABLED": "true"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"side": "trl" if variant.startswith("trl") else "ours", "variant": variant,
                "error": f"exit {proc.returncode}: {proc.stderr[-2000:]}", "log": (proc.stdout + proc.stderr)[-6000:]}
    out = json.loads(result.read_text(encoding="utf-8"))
    out["process_seconds"] = round(time.perf_counter() - start, 1)
    return out


def flops_per_token(config, method: str, sample_sq_over_len: float) -> float:
    """k * N + 6 * L * d_attn * S (see the module docstring) for a transformers config."""
    c = config.get_text_config()
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    q, kv = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    per_layer = c.hidden_size * (2 * q + 2 * kv) + 3 * c.hidden_size * c.intermediate_size
    n = c.num_hidden_layers * per_layer + c.hidden_size * c.vocab_size
    return METHODS[method].matmul_flops * n + 6 * c.num_hidden_layers * q * sample_sq_over_len


def peak_flops() -> tuple:
    """(FLOP/s, what it is): the GPU's dense bf16 peak from its name, or the measured fp32 matmul rate of a CPU.
    On a GPU this initialises CUDA: call it in a child process (`child_build`)."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        key = gpu_key(name)  # the planner's table of cards: one peak per card for the plan and the measurement
        if key:
            return GPUS[key].bf16_tflops * 1e12, f"{name}: {GPUS[key].bf16_tflops:.0f} TFLOP/s dense bf16"
        return None, f"{name}: peak unknown (add the card to GPUS in train/plan/planner.py)"
    a = torch.randn(2048, 2048)
    best = min(_timed(lambda: a @ a) for _ in range(3))
    return 2 * 2048 ** 3 / best, f"CPU: measured fp32 matmul {2 * 2048 ** 3 / best / 1e9:.0f} GFLOP/s"


def child_build(spec: Dict[str, Any], variant: str) -> Dict[str, Any]:
    """In a child process: the model folder (built on the GPU when there is one) and the device's peak FLOP/s; the
    process ends and with it everything it held on the GPU."""
    import torch

    folder = build_model(spec["model"], Path(spec["scratch"]))
    peak, what = peak_flops()
    gpu = torch.cuda.is_available()
    return {"model_dir": str(folder), "peak_flops": peak, "peak": what,
            "device": torch.cuda.get_device_name() if gpu else "CPU",
            "memory_gib": torch.cuda.get_device_properties(0).total_memory / 2 ** 30 if gpu else None}


def one_row_corpus(spec: Dict[str, Any], out: Path) -> Path:
    """The first samples of the corpus that together fill one packed row of spec['seq'] tokens (as our template and
    labels tokenise them): a dataset of one row, so every step trains on the same batch."""
    from train.data.labels import tokenize_conversation

    cfg = tt.load_recipe(recipe(spec, "ours"), Path(spec["scratch"]) / f"recipe-{spec['key']}-one-row.yaml")
    tokenizer = tt.tokenizer_for(cfg)  # the tokenizer only: the whole corpus is never prepared for this
    kept, used = [], 0
    for line in Path(spec["corpus"]).read_text(encoding="utf-8").splitlines():
        n = len(tokenize_conversation(tokenizer, json.loads(line)["messages"], cfg.data)["input_ids"])
        if used + n <= spec["seq"]:
            kept.append(line)
            used += n
    out.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summarise(run: Dict[str, Any], flops: float, peak: Optional[float]) -> Dict[str, Any]:
    if "error" in run:
        return {"variant": run["variant"], "side": run["side"], "error": run["error"][-300:]}
    row = tt.summarise(run)
    row.update({k: run[k] for k in ("n_gpu", "attention_kernel", "label_fraction", "recipe") if k in run})
    row["mfu"] = round(flops * row["tokens_per_s"] / peak, 4) if peak else None
    row["gpu_peak_allocated_gib"] = round(run.get("gpu_allocated", 0) / 2 ** 30, 2)
    row["gpu_peak_reserved_gib"] = round(run.get("gpu_reserved", 0) / 2 ** 30, 2)
    return row


def sample_length_moment(spec: Dict[str, Any]) -> float:
    """sum(sample length^2) / sum(sample length) over the prepared rows."""
    cfg = tt.load_recipe(recipe(spec, "ours"), Path(spec["scratch"]) / f"recipe-{spec['key']}-moment.yaml")
    _, data = tt.prepared_rows(cfg)
    squares = total = 0
    for positions in data.train["position_ids"]:
        for a, b in tt.sample_spans(positions):
            squares, total = squares + (b - a) ** 2, total + (b - a)
    return squares / max(total, 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help="comma-separated: llama3-8b, qwen3-8b, tiny "
                        "(default: the 8B models on a GPU, tiny on a CPU)")
    parser.add_argument("--methods", default="lora,qlora,full", help=f"comma-separated: {', '.join(NAMES)}")
    parser.add_argument("--seq", type=int, default=None, help="packed row length (default 4096 on a GPU, 256 on a CPU)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run, the first a warm-up "
                        "(default 12 on a GPU, 4 on a CPU)")
    parser.add_argument("--no-trl", action="store_true", help="our side only")
    parser.add_argument("--ours-gc", action="store_true", help="also run ours with gradient checkpointing")
    parser.add_argument("--trl-variants", action="store_true", help="also run TRL without gradient checkpointing")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    parser.add_argument("--out", default=None, help="JSON result (default bench/results/gpu_throughput[_cpu].json)")
    parser.add_argument("--scratch", default=None, help="folder for models, data and outputs (default: temporary)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--repeat-batch", action="store_true", help="one packed row, trained on at every step")
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        child = {"build": child_build, "ours": child_ours}.get(spec["variant"].split("-")[0], child_trl)
        run = child(spec, spec["variant"])
        if int(os.environ.get("RANK", "0")) == 0:
            Path(spec["result"]).write_text(json.dumps(run, ensure_ascii=False), encoding="utf-8")
        return 0
    gpu = on_gpu()
    models = (args.models or ("llama3-8b,qwen3-8b" if gpu else "tiny")).split(",")
    seq, steps = args.seq or (4096 if gpu else 256), args.steps or (12 if gpu else 4)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="gpu-throughput-"))
    variants = ["ours"] + (["ours-gc"] if args.ours_gc else []) + \
        (["trl"] if not args.no_trl and trl_available() else []) + (["trl-nogc"] if args.trl_variants else [])
    report = measure(models, args.methods.split(","), seq, steps, variants, scratch, args.repeat_batch, args.timeout)
    report["command"] = "python " + " ".join(sys.argv)
    out = Path(args.out or REPO / "bench" / "results" / f"gpu_throughput{'' if gpu else '_cpu'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"results: {out}")
    return 0


def measure(models: List[str], methods: List[str], seq: int, steps: int, variants: List[str], scratch: Path,
            repeat_batch: bool = False, timeout: int = 3600) -> Dict[str, Any]:
    """Every (model, method) with every variant, each in its own process; the report (also what
    scripts/gpu_check.sh reads): per run the rows of `summarise`, the FLOPs per token and the device's peak."""
    scratch.mkdir(parents=True, exist_ok=True)
    gpu = on_gpu()
    corpus = scratch / "corpus.jsonl"
    write_corpus(corpus, max(300, 3 * steps * seq // 400))
    report: Dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "seq": seq, "steps": steps,
                              "repeat_batch": repeat_batch, "runs": {}}
    for model in models:
        built = run_child({"key": model, "model": model, "scratch": str(scratch)}, "build", timeout)
        if "error" in built:
            report["runs"][model] = {"error": built["error"]}
            continue
        report.update(peak=built["peak"], device=built["device"], device_memory_gib=built["memory_gib"])
        for method in methods:
            key = f"{model}-{method}"
            spec = {"key": key, "model_dir": built["model_dir"], "method": method, "seq": seq, "steps": steps,
                    "gpu": gpu, "corpus": str(corpus), "scratch": str(scratch)}
            if repeat_batch:
                spec["corpus"] = str(one_row_corpus(spec, scratch / f"corpus-{key}-one-row.jsonl"))
            from transformers import AutoConfig

            flops = flops_per_token(AutoConfig.from_pretrained(built["model_dir"]), method, sample_length_moment(spec))
            runs = [run_child(spec, v, timeout) for v in variants
                    if not (v.startswith("trl") and not METHODS[method].adapter and gpu)]  # TRL full: not compared
            rows = [summarise(run, flops, built["peak_flops"]) for run in runs]
            report["runs"][key] = {"flops_per_token": flops, "rows": rows, "raw": runs}
            print(table(key, rows), flush=True)
    return report


def table(key: str, rows: List[Dict[str, Any]]) -> str:
    trl = next((r for r in rows if r["variant"] == "trl" and "error" not in r), None)
    lines = [f"\n{key}", "| run | tokens/s per device | vs TRL | MFU | step s | peak GPU GiB (reserved) | peak RSS MiB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error'][-120:]!r} | | | | | |")
            continue
        ratio = f"{r['tokens_per_s'] / trl['tokens_per_s']:.2f}x" if trl and trl["tokens_per_s"] else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        lines.append(f"| {r['variant']} | {r['tokens_per_s']:.0f} | {ratio} | {mfu} | {r['step_seconds']} | "
                     f"{r['gpu_peak_allocated_gib']} ({r['gpu_peak_reserved_gib']}) | {r['peak_rss_mib']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if "--child" in sys.argv:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
