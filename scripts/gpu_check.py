"""The GPU acceptance kit (run it through scripts/gpu_check.sh): what only a GPU can show, in one command.

Each check is a line with a status (pass, fail, skip, info) and its numbers, in OUT/gpu_check.json and OUT/gpu_check.md
(the throughput harness's own report in OUT/throughput.json):
  environment   torch, the device, the packages, which attention kernels exist here
  attention     packed rows through each attention path (PyTorch varlen_attn, flex_attention, FlashAttention when
                installed, per-sample SDPA, transformers' SDPA with its L x L mask) give every sample its own logits
                (a 2-layer model of Llama-3-8B's attention shape, bf16); forward + backward time of each kernel on two
                4096-token rows: the per-sample kernels must beat the masked SDPA
  fused loss    the label-only output layer and loss (train/kernels/fused_loss.py) against fp32, next to plain bf16
                autograd: loss and every gradient, with the output layer frozen (LoRA) and trained (full)
  training      train/sft.py on a Llama-3-8B-shaped model with random weights (configs/models/llama3-8b.json): LoRA,
                QLoRA (nf4) and full fine-tuning (8-bit AdamW, checkpointing) in bf16 on one packed 4096-token row
                trained on at every step: finite and falling loss, n_gpu == 1, peak memory within 15% of the plan
  eval          python -m launch eval on the LoRA run: generation on the GPU
  throughput    tokens/s per GPU and MFU of ours and TRL's SFTTrainer on the same row (bench/gpu_throughput.py), and
                the goals on one H100: LoRA >= 1.3x TRL, LoRA MFU >= 40%, QLoRA peak <= 12 GB
`--cpu-rehearsal` runs every step on the CPU with the tiny model (make test does), so the kit cannot rot between
GPU loans; numbers there are information only. The measured MFU per method goes to gpu_check.json's
"mfu_calibration", in the form configs/mfu.json takes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GOALS = {"lora_vs_trl": 1.3, "lora_mfu": 0.40, "qlora_peak_gb": 12.0, "plan_tolerance": 0.15}


@dataclass
class Check:
    step: str
    name: str
    status: str  # pass | fail | skip | info
    numbers: Dict[str, Any] = field(default_factory=dict)
    detail: str = ""


@dataclass
class Kit:
    out: Path
    cpu: bool  # the CPU rehearsal: a tiny model, numbers are information only
    budget_s: float
    steps: int
    trl: bool
    model: str
    started: float = field(default_factory=time.time)
    checks: List[Check] = field(default_factory=list)
    facts: Dict[str, Any] = field(default_factory=dict)

    def left(self) -> float:
        return self.budget_s - (time.time() - self.started)

    def add(self, step: str, name: str, ok: Optional[bool], numbers=None, detail: str = "") -> Check:
        """ok None: information. On the CPU rehearsal a GPU goal is information, never a failure."""
        status = "info" if ok is None else ("pass" if ok else "fail")
        check = Check(step, name, status, numbers or {}, detail)
        self.checks.append(check)
        print(f"[{status:4}] {step}: {name} {json.dumps(check.numbers, default=str)} {detail}".rstrip(), flush=True)
        return check

    def skip(self, step: str, name: str, why: str) -> None:
        self.checks.append(Check(step, name, "skip", {}, why))
        print(f"[skip] {step}: {name}: {why}", flush=True)


def timed(fn: Callable, cuda: bool, repeats: int = 5) -> float:
    """Median seconds of fn() after one warm-up call."""
    import torch

    fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def relative_error(a, b) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# ----------------------------------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------------------------------


def step_environment(kit: Kit) -> None:
    import importlib.metadata as md

    import torch

    from train.kernels import packed_attention as PA
    from train.kernels.attention import installed

    versions = {}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "trl", "omegaconf",
                 "flash-attn", "kiwipiepy"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "CPU"
    memory = torch.cuda.get_device_properties(0).total_memory / 2 ** 30 if cuda else None
    kernels = {"torch_varlen_attn": PA._torch_varlen_attn is not None,
               "torch_varlen_parameters": sorted(PA._VARLEN_PARAMETERS), "flex_attention": PA.flex_attention is not None,
               "flash_attn": installed("flash_attn")}
    kit.facts.update(device=device, memory_gib=memory, versions=versions, kernels=kernels, cuda=cuda)
    ok = None if kit.cpu else cuda
    kit.add("environment", "device and packages", ok, {"device": device, "memory_gib": memory and round(memory, 1),
                                                        **{k: v for k, v in versions.items() if v}, **kernels})


def _packed_rows(lengths_per_row: List[List[int]], vocab: int, seed: int = 0):
    """Rows of samples (random token ids) packed as the collator packs them, and each sample alone."""
    import torch

    from train.data import IGNORE_INDEX
    from train.data.packing import Collator

    g = torch.Generator().manual_seed(seed)
    rows, samples = [], []
    for lengths in lengths_per_row:
        ids, positions = [], []
        for n in lengths:
            sample = torch.randint(2, vocab, (n,), generator=g).tolist()
            samples.append((len(rows), len(ids), sample))
            ids += sample
            positions += list(range(n))
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * len(ids), "position_ids": positions})
    return Collator(pad_token_id=0, packing=True, flash_varlen_kwargs=True)(rows), samples


def step_attention(kit: Kit) -> None:
    """Model-level numerics of every attention path, then the kernels' speed."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from train.kernels import packed_attention as PA

    PA.register()
    cuda, dtype = kit.facts["cuda"], (torch.bfloat16 if kit.facts["cuda"] else torch.float32)
    device = "cuda" if cuda else "cpu"
    hidden, heads, kv, layers, row = (4096, 32, 8, 2, 4096) if not kit.cpu else (64, 4, 2, 2, 192)
    config = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=1024 if not kit.cpu else 128,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                         max_position_embeddings=8192, tie_word_embeddings=False, use_cache=False)
    rng = random.Random(0)
    lengths = []
    for _ in range(2):
        left, parts = row, []
        while left > 8:
            n = min(left, rng.randint(row // 16, row // 3))
            parts.append(n)
            left -= n
        lengths.append(parts)
    batch, samples = _packed_rows(lengths, config.vocab_size)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([s], device=device)).logits[0].float() for _, _, s in samples]

    def logits_with(implementation: str, kernel: Optional[str] = None):
        model.set_attn_implementation(implementation)
        with torch.no_grad(), PA.forced_kernel(kernel):
            out = model(**batch).logits.float()
        model.set_attn_implementation("sdpa")
        return out

    paths = [("sdpa (L x L mask)", "sdpa", None), ("per-sample SDPA", PA.PACKED_VARLEN, "sdpa_per_sample")]
    if PA.flex_attention is not None:
        paths.append(("flex_attention", PA.PACKED_VARLEN, "flex"))
    if cuda and PA._torch_varlen_attn is not None:
        paths.append(("PyTorch varlen_attn", PA.PACKED_VARLEN, "torch_varlen"))
    if cuda and kit.facts["kernels"]["flash_attn"]:
        paths.append(("FlashAttention-2", "flash_attention_2", None))
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-4
    for label, implementation, kernel in paths:
        if kit.left() < 60:
            kit.skip("attention", label, "time budget")
            continue
        try:
            packed = logits_with(implementation, kernel)
        except Exception as e:  # noqa: BLE001 - a path that fails here is the finding
            kit.add("attention", f"{label}: per-sample logits", False, detail=f"{type(e).__name__}: {e}"[:400])
            continue
        worst = max(relative_error(packed[r, start:start + len(s)], ref) for (r, start, s), ref in zip(samples, alone))
        kit.add("attention", f"{label}: per-sample logits", worst <= tolerance,
                {"worst_relative_error": round(worst, 5), "tolerance": tolerance, "samples": len(samples)})
    # the negative control: without position ids nothing separates the samples, and the check must see it
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"]).logits.float()
    worst = max(relative_error(leaky[r, start:start + len(s)], ref) for (r, start, s), ref in zip(samples, alone))
    kit.add("attention", "negative control: samples that attend to each other are caught", worst > tolerance,
            {"worst_relative_error": round(worst, 5), "tolerance": tolerance})
    model.to("meta")  # its memory back before the kernels are timed
    speed_of_kernels(kit, dtype, device)


def speed_of_kernels(kit: Kit, dtype, device: str) -> None:
    """Forward + backward of attention alone on two rows of packed samples: each kernel, median of 5."""
    import random

    import torch

    from train.kernels import packed_attention as PA

    cuda = device == "cuda"
    heads, kv, dim, row = (32, 8, 128, 4096) if not kit.cpu else (4, 2, 16, 512)
    rng = random.Random(1)
    sizes = []
    for _ in range(2):
        left = row
        while left > 0:
            n = min(left, rng.randint(row // 16, row // 4))
            sizes.append(n)
            left -= n
    total = sum(sizes)
    cu = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()], dtype=torch.int32, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(total, heads, dim, device=device, dtype=dtype, generator=g).requires_grad_()
    k = torch.randn(total, kv, dim, device=device, dtype=dtype, generator=g).requires_grad_()
    v = torch.randn(total, kv, dim, device=device, dtype=dtype, generator=g).requires_grad_()
    grad = torch.randn(total, heads, dim, device=device, dtype=dtype, generator=g)
    scale = dim ** -0.5

    def as_batch(t):  # (T, H, D) -> (2, H, row, D) for the whole-row kernels
        return t.view(2, row, t.shape[1], dim).transpose(1, 2)

    def masked():
        doc = torch.repeat_interleave(torch.arange(len(sizes), device=device), cu.diff().long()).view(2, row)
        i = torch.arange(row, device=device)
        mask = (doc[:, :, None] == doc[:, None, :]) & (i[None, :, None] >= i[None, None, :])
        out = torch.nn.functional.scaled_dot_product_attention(as_batch(q), as_batch(k), as_batch(v),
                                                               attn_mask=mask[:, None], scale=scale, enable_gqa=True)
        out.transpose(1, 2).reshape(total, heads, dim).backward(grad)

    def per_sample():
        flat = [t.transpose(0, 1)[None] for t in (q, k, v)]  # (1, H, T, D): the rows' tokens one after the other
        PA._per_sample_sdpa(*flat, sizes, 0.0, scale).backward(grad)

    kernels = {"sdpa with L x L mask": masked, "per-sample SDPA": per_sample}
    if PA.flex_attention is not None and cuda:  # (flex_attention has no backward on a CPU)
        kernels["flex_attention"] = lambda: PA._flex(q, k, v, cu, scale, None).backward(grad)
    if cuda and PA._torch_varlen_attn is not None:
        kernels["PyTorch varlen_attn"] = lambda: PA._torch_varlen(q, k, v, cu, max(sizes), scale, None).backward(grad)
    if cuda and kit.facts["kernels"]["flash_attn"]:
        from flash_attn import flash_attn_varlen_func

        kernels["FlashAttention-2"] = lambda: flash_attn_varlen_func(q, k, v, cu, cu, max(sizes), max(sizes),
                                                                     softmax_scale=scale, causal=True).backward(grad)
    seconds = {}
    for name, fn in kernels.items():
        if kit.left() < 45:
            kit.skip("attention", f"speed: {name}", "time budget")
            continue
        try:
            seconds[name] = timed(fn, cuda, repeats=5 if cuda else 2)
        except Exception as e:  # noqa: BLE001
            kit.add("attention", f"speed: {name}", False, detail=f"{type(e).__name__}: {e}"[:400])
    masked_s = seconds.get("sdpa with L x L mask")
    numbers = {name: round(s * 1e3, 2) for name, s in seconds.items()}
    numbers.update(tokens=total, rows=2, samples=len(sizes))
    per_sample = {n: s for n, s in seconds.items() if n in ("PyTorch varlen_attn", "FlashAttention-2", "flex_attention")}
    ok = None if kit.cpu or not per_sample or masked_s is None else all(s < masked_s for s in per_sample.values())
    kit.add("attention", "speed order (ms, forward + backward): per-sample kernels beat the L x L mask", ok, numbers)


def step_fused_loss(kit: Kit) -> None:
    import torch

    from train.kernels.fused_loss import LinearCrossEntropy

    cuda = kit.facts["cuda"]
    device = "cuda" if cuda else "cpu"
    n, hidden, vocab = (4096, 4096, 128256) if not kit.cpu else (300, 64, 1000)
    g = torch.Generator(device=device).manual_seed(0)
    h32 = torch.randn(n, hidden, device=device, generator=g)
    w32 = torch.randn(vocab, hidden, device=device, generator=g) * hidden ** -0.5
    targets = torch.randint(0, vocab, (n,), device=device, generator=g)
    for trains_head in (False, True):
        label = "output layer trained (full)" if trains_head else "output layer frozen (LoRA)"

        def run(fn, dtype):
            h = h32.detach().to(dtype, copy=True).requires_grad_()
            w = w32.detach().to(dtype, copy=True).requires_grad_(trains_head)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            loss = fn(h, w)
            (loss / n).backward()
            peak = (torch.cuda.max_memory_allocated() - base) if cuda else 0
            return loss.item(), h.grad.float(), (w.grad.float() if trains_head else None), peak

        def plain(h, w):
            return torch.nn.functional.cross_entropy((h @ w.t()).float(), targets, reduction="sum")

        def fused(h, w):
            return LinearCrossEntropy.apply(h, w, None, targets)

        exact = run(plain, torch.float32)
        bf16_plain = run(plain, torch.bfloat16)
        ours = run(fused, torch.bfloat16)
        errors = {}
        for name, (a, b, e) in {"loss": (ours[0], bf16_plain[0], exact[0])}.items():
            errors[name] = (abs(a - e) / abs(e), abs(b - e) / abs(e))
        errors["hidden grad"] = (relative_error(ours[1], exact[1]), relative_error(bf16_plain[1], exact[1]))
        if trains_head:
            errors["weight grad"] = (relative_error(ours[2], exact[2]), relative_error(bf16_plain[2], exact[2]))
        ok = all(o <= max(2 * p, 2e-2) for o, p in errors.values())
        numbers = {f"{k} ours/plain bf16": f"{o:.2e}/{p:.2e}" for k, (o, p) in errors.items()}
        if cuda:
            numbers.update(peak_mib_ours=round(ours[3] / 2 ** 20), peak_mib_plain_bf16=round(bf16_plain[3] / 2 ** 20))
        kit.add("fused loss", f"{label}: relative error to fp32 within 2x plain bf16 autograd's", ok, numbers)


def step_training(kit: Kit) -> Dict[str, Any]:
    """bench/gpu_throughput.py's harness on one repeated packed row: LoRA, QLoRA, full (ours), LoRA and QLoRA (TRL)."""
    from bench import gpu_throughput as gt
    from bench.common import trl_available

    seq = 256 if kit.cpu else 4096
    use_trl = kit.trl and trl_available()
    variants = ["ours"] + (["trl"] if use_trl else [])
    per_run_timeout = int(max(120, min(480, kit.left() / 3)))
    report = gt.measure([kit.model], ["lora", "qlora", "full"], seq, kit.steps, variants, kit.out / "scratch",
                        repeat_batch=True, timeout=per_run_timeout)
    kit.facts["throughput_report"] = {k: v for k, v in report.items() if k != "runs"}
    (kit.out / "throughput.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    for key, run in report["runs"].items():
        if "error" in run:
            kit.add("training", f"{key}: model built", False, detail=run["error"][-600:])
            continue
        for row, raw in zip(run["rows"], run["raw"]):
            if row["side"] != "ours":
                continue
            if "error" in row:
                kit.add("training", f"{key}: train/sft.py ran", False, detail=raw.get("log", row["error"])[-1500:])
                continue
            losses = [x for x in row["losses"] if x is not None]
            finite = bool(losses) and all(math.isfinite(x) for x in losses)
            kit.add("training", f"{key}: finite loss, falling on a repeated batch",
                    finite and losses[-1] < losses[0], {"losses": [round(x, 4) for x in losses]})
            expected = 0 if kit.cpu else 1
            kit.add("training", f"{key}: one process uses one GPU (n_gpu == {expected})",
                    row.get("n_gpu") == expected, {"n_gpu": row.get("n_gpu"), "attention": row.get("attention_kernel")})
            compare_with_plan(kit, key, row, report)
    return report


def compare_with_plan(kit: Kit, key: str, row: Dict[str, Any], report: Dict[str, Any]) -> None:
    """The run's peak memory against `python -m launch plan` for the same setting (the planner's tensor peak)."""
    from train.config import load_config
    from train.paths import GIB
    from train.plan import planner as P
    from train.plan.shape import read_shape

    cfg = load_config(row["recipe"])
    shape = read_shape(cfg.model.name_or_path)
    a = P.Assumptions(label_fraction=row.get("label_fraction") or 1.0)
    if kit.cpu:
        hw = P.Hardware(device="cpu", gpu_mem_gib=64)
        measured = (row["peak_rss_mib"] - row["rss_at_start_mib"]) * 2 ** 20
    else:
        hw = P.Hardware(device="cuda", gpu_mem_gib=report.get("device_memory_gib") or 80, gpu=report.get("device", ""),
                        key=P.gpu_key(report.get("device", "")))
        measured = row["gpu_peak_allocated_gib"] * GIB
    e = P.estimate(shape, cfg, hw, "ddp", cfg.train.per_device_batch_size, cfg.train.gradient_checkpointing,
                   cfg.train.gradient_accumulation_steps, a)
    predicted = e.peak
    ratio = measured / predicted if predicted else float("nan")
    ok = None if kit.cpu else abs(ratio - 1) <= GOALS["plan_tolerance"]
    mib = 2 ** 20
    kit.add("training", f"{key}: peak memory vs the plan (within {GOALS['plan_tolerance']:.0%})", ok,
            {"measured_mib": round(measured / mib), "planned_mib": round(predicted / mib), "ratio": round(ratio, 3),
             "planned_parts_mib": {k: round(v / mib) for k, v in e.parts.items() if v}})


def step_eval(kit: Kit, report: Dict[str, Any]) -> None:
    """python -m launch eval on the LoRA run's adapter, four held-out conversations, on the device."""
    from train.config import load_config

    key = f"{kit.model}-lora"
    rows = [r for r in report["runs"].get(key, {}).get("rows", []) if r.get("side") == "ours" and "error" not in r]
    if not rows:
        kit.skip("eval", "python -m launch eval", "no LoRA run to evaluate")
        return
    cfg = load_config(rows[0]["recipe"])
    held_out = kit.out / "scratch" / "eval.jsonl"
    corpus = Path(cfg.data.sources[0].path).read_text(encoding="utf-8").splitlines()[:4]
    held_out.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    command = [sys.executable, "-m", "launch", "eval", "--config", rows[0]["recipe"], "--limit", "4",
               "--max-new-tokens", "16", "--batch-size", "4", "eval.embedding_model=none",
               f"data.eval_sources=[{{path: {held_out}, format: messages}}]"]
    start = time.time()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=max(60, int(kit.left())),
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    log = proc.stdout + proc.stderr
    where = "cuda:0" if kit.facts["cuda"] else "the CPU"
    report_file = Path(cfg.output_dir) / "eval" / "eval_report.json"
    ok = proc.returncode == 0 and f"evaluating on {where}" in log and report_file.exists()
    numbers = {"seconds": round(time.time() - start, 1), "exit_code": proc.returncode}
    if report_file.exists():
        results = json.loads(report_file.read_text())["results"]
        numbers["eval_loss"] = round(results["fine-tuned"]["eval_loss"], 4)
    kit.add("eval", f"python -m launch eval generates on {where}", ok, numbers, "" if ok else log[-1500:])


def step_throughput(kit: Kit, report: Dict[str, Any]) -> None:
    """Ours against TRL on the same row, LoRA and QLoRA; the goals; the measured MFU per method."""
    from train.plan import planner as P

    calibration: Dict[str, Any] = {}
    for method in ("lora", "qlora", "full"):
        run = report["runs"].get(f"{kit.model}-{method}", {})
        rows = {r["side"]: r for r in run.get("rows", []) if "error" not in r}
        ours, trl = rows.get("ours"), rows.get("trl")
        if ours is None:
            kit.skip("throughput", method, "no run of ours")
            continue
        numbers = {"tokens_per_s": ours["tokens_per_s"], "mfu": ours["mfu"], "step_s": ours["step_seconds"],
                   "peak_allocated_gib": ours["gpu_peak_allocated_gib"], "attention": ours.get("attention_kernel")}
        if trl:
            numbers.update(trl_tokens_per_s=trl["tokens_per_s"], trl_mfu=trl["mfu"],
                           trl_peak_allocated_gib=trl["gpu_peak_allocated_gib"],
                           ratio=round(ours["tokens_per_s"] / trl["tokens_per_s"], 3) if trl["tokens_per_s"] else None)
        kit.add("throughput", f"{method}: ours{' vs TRL' if trl else ''}", None, numbers)
        if ours.get("mfu") and not kit.cpu:
            key = P.gpu_key(report.get("device", ""))
            calibration.setdefault(key or report.get("device", "unknown"), {})[method] = {
                "mfu": ours["mfu"], "date": time.strftime("%Y-%m-%d"), "device": report.get("device"),
                "seq": report.get("seq"), "source": "scripts/gpu_check.sh"}
        goal = lambda ok: None if kit.cpu else ok  # noqa: E731 - the CPU rehearsal only informs
        if method == "lora":
            if trl and trl["tokens_per_s"]:
                kit.add("throughput", f"goal: LoRA >= {GOALS['lora_vs_trl']}x TRL's tokens/s",
                        goal(numbers["ratio"] >= GOALS["lora_vs_trl"]), {"ratio": numbers["ratio"]})
            else:
                kit.skip("throughput", f"goal: LoRA >= {GOALS['lora_vs_trl']}x TRL's tokens/s", "TRL did not run")
            kit.add("throughput", f"goal: LoRA MFU >= {GOALS['lora_mfu']:.0%}",
                    goal((ours["mfu"] or 0) >= GOALS["lora_mfu"]), {"mfu": ours["mfu"]})
        if method == "qlora":
            gb = ours["gpu_peak_allocated_gib"] * 2 ** 30 / 1e9
            kit.add("throughput", f"goal: QLoRA peak memory <= {GOALS['qlora_peak_gb']:g} GB",
                    goal(gb <= GOALS["qlora_peak_gb"]), {"peak_gb": round(gb, 2)})
    kit.facts["mfu_calibration"] = calibration


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------


def write_report(kit: Kit, command: str) -> Dict[str, Any]:
    counts = {s: sum(1 for c in kit.checks if c.status == s) for s in ("pass", "fail", "skip", "info")}
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": command, "cpu_rehearsal": kit.cpu,
              "seconds": round(time.time() - kit.started, 1), "counts": counts,
              "device": kit.facts.get("device"), "facts": {k: v for k, v in kit.facts.items() if k != "cuda"},
              "mfu_calibration": kit.facts.get("mfu_calibration", {}), "checks": [asdict(c) for c in kit.checks]}
    (kit.out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    lines = [f"# GPU check: {result['device']}", "",
             f"{result['date']}, {result['seconds']} s, `{command}`" + (" (CPU rehearsal)" if kit.cpu else ""), "",
             f"pass {counts['pass']}, fail {counts['fail']}, skip {counts['skip']}, info {counts['info']}", "",
             "| step | check | status | numbers |", "|---|---|---|---|"]
    for c in kit.checks:
        numbers = ", ".join(f"{k}={v}" for k, v in c.numbers.items())
        detail = f" ({c.detail[:300]})" if c.detail and c.status != "pass" else ""
        lines.append(f"| {c.step} | {c.name} | {c.status} | {numbers}{detail} |".replace("\n", " "))
    if result["mfu_calibration"]:
        lines += ["", "MFU measured (for configs/mfu.json's \"measured\"):", "", "```json",
                  json.dumps(result["mfu_calibration"], indent=1), "```"]
    (kit.out / "gpu_check.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--cpu-rehearsal", action="store_true", help="every step on the CPU with the tiny model")
    parser.add_argument("--budget-s", type=float, default=None, help="time budget (default 480 s; rehearsal 900 s)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per training run (default 6; 4)")
    parser.add_argument("--no-trl", action="store_true", help="our side only")
    parser.add_argument("--model", default=None, help="configs/models/ name (default llama3-8b; rehearsal: tiny)")
    args = parser.parse_args(argv)
    import torch

    if not args.cpu_rehearsal and not torch.cuda.is_available():
        print("error: no CUDA device here. On a CPU, run scripts/gpu_check.sh --cpu-rehearsal", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kit = Kit(out=out, cpu=args.cpu_rehearsal, budget_s=args.budget_s or (900 if args.cpu_rehearsal else 480),
              steps=args.steps or (4 if args.cpu_rehearsal else 6), trl=not args.no_trl,
              model=args.model or ("tiny" if args.cpu_rehearsal else "llama3-8b"))
    command = "scripts/gpu_check.sh " + " ".join(argv if argv is not None else sys.argv[1:])
    report: Dict[str, Any] = {"runs": {}}
    for name, step in (("environment", step_environment), ("attention", step_attention),
                       ("fused loss", step_fused_loss), ("training", step_training)):
        try:
            result = step(kit)
            if name == "training":
                report = result
        except Exception as e:  # noqa: BLE001 - a step that breaks is a failed check, and the others still run
            kit.add(name, "step completed", False, detail=f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}")
        write_report(kit, command)  # after every step: a command killed at its time limit still leaves a report
    for name, step in (("eval", step_eval), ("throughput", step_throughput)):
        try:
            step(kit, report)
        except Exception as e:  # noqa: BLE001
            kit.add(name, "step completed", False, detail=f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}")
        write_report(kit, command)
    result = write_report(kit, command)
    print(f"\n{out / 'gpu_check.md'}: pass {result['counts']['pass']}, fail {result['counts']['fail']}, "
          f"skip {result['counts']['skip']}, info {result['counts']['info']} in {result['seconds']} s", flush=True)
    return 1 if result["counts"]["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
