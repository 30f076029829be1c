"""The memory planner (train/plan/shape.py, train/plan/planner.py, `python -m launch plan`, train/plan/check.py in
train/sft.py) against independent measurements: parameter counts of the models transformers builds on the meta device,
LoRA counts of peft, the tensors autograd saves (saved_tensors_hooks), the bytes bitsandbytes allocates for 4-bit
weights, the peak memory of real training runs (train/sft.py in a subprocess), and published figures (QLoRA paper,
LLaMA-Factory, PEFT)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from train.data.report import DataReport
from train.methods import METHODS
from train.plan import check as M
from train.plan import shape as S
from train.plan import planner as P
from train.config import Config, DataConfig, LoraSettings, ModelConfig, QLoraSettings, TrainConfig, load_config

REPO = Path(__file__).resolve().parent.parent
GB = 1e9


def make_cfg(method="lora", dtype="bfloat16", seq=2048, r=16, targets=("all-linear",), dropout=0.05, attn="sdpa",
             packing=True, optim="adamw_torch", micro_batch=1, accumulation=1, checkpointing=False, double_quant=True):
    """A Config from the schema's dataclasses with the planner's inputs set (no recipe file needed)."""
    return Config(model=ModelConfig(name_or_path="planned", dtype=dtype, attn_implementation=attn), method=method,
                  lora=LoraSettings(r=r, target_modules=list(targets), dropout=dropout),
                  qlora=QLoraSettings(double_quant=double_quant),
                  data=DataConfig(max_length=seq, packing=packing),
                  train=TrainConfig(optim=optim, per_device_batch_size=micro_batch,
                                    gradient_accumulation_steps=accumulation, gradient_checkpointing=checkpointing),
                  output_dir="out")


def llama_config(**kw) -> dict:
    """A Llama config.json dict (no weights)."""
    base = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu", rms_norm_eps=1e-5,
                max_position_embeddings=4096, tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
    return {**base, **kw}


LLAMA1_65B = llama_config(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=64,
                          intermediate_size=22016, vocab_size=32000)
LLAMA2_70B = llama_config(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                          intermediate_size=28672, vocab_size=32000)


# ---------------------------------------------------------------------------------------------------------------------
# Shapes and parameter counts
# ---------------------------------------------------------------------------------------------------------------------


def _write_config(folder: Path, config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    return folder


def test_parameter_counts_equal_the_models_transformers_builds_on_the_meta_device(tmp_path):
    """The formula's count and linear layers equal transformers' own model, for the shipped shapes, the SmolLM2 asset
    (tied embeddings) and Qwen2 (q/k/v biases), Mistral, Gemma and Gemma-3 (4 norms, q/k norms) built here."""
    from transformers import Gemma3TextConfig, GemmaConfig, MistralConfig, Qwen2Config

    from launch.assets import smollm2_135m_instruct

    small = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=3, num_attention_heads=8,
                 num_key_value_heads=2, vocab_size=1000)
    sources = [str(p) for p in sorted((REPO / "configs/models").glob("*.json"))] + [str(smollm2_135m_instruct())]
    for name, cls, extra in (("qwen2", Qwen2Config, {}), ("mistral", MistralConfig, {}),
                             ("gemma", GemmaConfig, {"head_dim": 32}), ("gemma3", Gemma3TextConfig, {"head_dim": 32})):
        sources.append(str(_write_config(tmp_path / name, cls(**small, **extra))))
    assert len(sources) >= 8
    for source in sources:
        shape = S.read_shape(source)
        total, linears = S.count_on_meta(source)
        assert shape.parameters().total == total, source
        assert shape.layer_linears() == linears, source
    assert S.read_shape("llama3-8b").parameters().total == 8_030_261_248  # Meta's published 8.03B
    assert S.read_shape("qwen3-8b").parameters().total == 8_190_735_360  # Qwen's published 8.19B


def test_model_sources_and_clear_errors(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(llama_config(hidden_size=64, num_hidden_layers=2,
                                                                num_attention_heads=4, intermediate_size=128,
                                                                vocab_size=100)))
    assert replace(S.read_shape(str(folder)), name="") == replace(S.read_shape(str(folder / "config.json")), name="")
    assert S.read_shape("llama3-70b").layers == 80  # a name in configs/models/
    (tmp_path / "bad.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(S.PlanError, match="num_hidden_layers, num_attention_heads, intermediate_size, vocab_size"):
        S.read_shape(str(tmp_path / "bad.json"))
    with pytest.raises(S.PlanError, match="llama3-8b"):  # offline: the hub id cannot be read; say what can be
        S.read_shape("nobody/no-such-model")
    assert S.shape_from_name("meta-llama/Llama-3.1-70B-Instruct").parameters().total == pytest.approx(70e9, rel=0.05)
    assert S.shape_from_name("my-model") is None


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("targets", [["all-linear"], ["q_proj", "v_proj"], ["gate_proj", "down_proj", "o_proj"]])
def test_lora_parameter_count_equals_peft(tiny_causal_lm, arch, targets):
    from peft import LoraConfig, get_peft_model

    model = tiny_causal_lm(arch)
    shape = S.shape_from_config(model.config.to_dict(), arch)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear" if targets == ["all-linear"]
                                                  else targets))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert S.lora_parameters(shape, 4, targets) == trainable
    with pytest.raises(S.PlanError, match="none is a linear layer"):
        S.lora_targets(shape, ["c_attn"])
    # trainable copies of the embeddings and output layer (added tokens) come on top
    model = tiny_causal_lm(arch)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets[0] if targets == ["all-linear"] else
                                                  targets, modules_to_save=["embed_tokens", "lm_head"]))
    cfg = make_cfg(r=4, targets=targets)
    cfg.lora.modules_to_save = ["embed_tokens", "lm_head"]
    assert S.trainable_parameters(shape, cfg) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------------------------------
# Activations: the per-layer formula against the tensors autograd saves
# ---------------------------------------------------------------------------------------------------------------------


def _saved_bytes(model, inputs: dict, autocast: bool, recomputing: bool = True) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves for backward during one forward pass; under
    train/kernels/recompute.py's `recomputing()`, what it replaces by a note is not counted (its own hook would do that)."""
    import torch

    from train.kernels import recompute

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        if isinstance(recompute._pack(t), recompute._Note):
            return t
        key = t.untyped_storage().data_ptr()
        if key not in params:
            seen[key] = t.untyped_storage().nbytes()
        return t

    with recompute.recomputing(recomputing), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model(**inputs, use_cache=False)
    return sum(seen.values())


def _saved_per_layer_and_token(arch, dtype, attn, method, targets, dropout, autocast, packed, recompute, seq=32):
    """(saved bytes per decoder layer per token, the model config): from models of 1 and 2 layers and batches of 1 and
    2 rows, so that what is not per layer (embeddings, the output layer) or not per token (weight copies) cancels."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    from train.kernels.packed_attention import register
    from train.kernels.recompute import recompute_activations

    register()  # "sdpa_packed" and "varlen_packed" become valid implementations

    common = dict(vocab_size=300, hidden_size=128, intermediate_size=352, num_attention_heads=4, num_key_value_heads=2,
                  tie_word_embeddings=False, use_cache=False, **({"head_dim": 32} if arch == "qwen3" else {}))
    saved = {}
    for layers in (1, 2):
        config = (LlamaConfig if arch == "llama" else Qwen3Config)(num_hidden_layers=layers, **common)
        for rows in (1, 2):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype), attn_implementation=attn)
            if recompute:  # as train/model.py does without gradient checkpointing, before LoRA
                assert recompute_activations(model) == {"gated_mlp": layers,  # + q/k norms in Qwen3
                                                       "rms_norm": (4 if arch == "qwen3" else 2) * layers + 1}
            if method == "lora":
                from peft import LoraConfig, get_peft_model

                model = get_peft_model(model, LoraConfig(r=8, lora_dropout=dropout, target_modules="all-linear"
                                                         if targets == ["all-linear"] else targets))
            model.train()
            positions = torch.cat([torch.arange(seq // 2), torch.arange(seq - seq // 2)]) if packed else \
                torch.arange(seq)  # packed: two samples per row, so transformers builds a block mask
            inputs = {"input_ids": torch.randint(0, 300, (rows, seq)), "position_ids": positions.repeat(rows, 1)}
            saved[layers, rows] = _saved_bytes(model, inputs, autocast, recompute)
    per = ((saved[2, 2] - saved[1, 2]) - (saved[2, 1] - saved[1, 1])) / seq
    return per, config


@pytest.mark.parametrize("recompute", [False, True])  # the trainer recomputes without gradient checkpointing
@pytest.mark.parametrize("arch,dtype,attn,method,targets,dropout,autocast,packed", [
    ("llama", "float32", "sdpa", "full", ["all-linear"], 0.0, False, True),
    ("llama", "bfloat16", "sdpa", "full", ["all-linear"], 0.0, False, True),
    ("llama", "bfloat16", "eager", "full", ["all-linear"], 0.0, False, True),
    ("llama", "float32", "sdpa", "lora", ["all-linear"], 0.0, False, True),
    ("llama", "float32", "sdpa", "lora", ["all-linear"], 0.1, False, True),
    ("llama", "float32", "sdpa", "lora", ["q_proj", "v_proj"], 0.0, False, False),
    ("llama", "bfloat16", "sdpa", "lora", ["all-linear"], 0.0, True, True),  # the GPU path: bf16 base, autocast
    ("llama", "bfloat16", "sdpa", "lora", ["all-linear"], 0.1, True, True),
    ("qwen3", "float32", "sdpa", "full", ["all-linear"], 0.0, False, True),
    ("qwen3", "bfloat16", "sdpa", "lora", ["all-linear"], 0.05, True, False),
    # the per-sample attention packed rows train with on a CPU (train/kernels/attention.py): no mask, heads unexpanded
    ("llama", "float32", "sdpa_packed", "full", ["all-linear"], 0.0, False, True),
    ("llama", "float32", "sdpa_packed", "lora", ["all-linear"], 0.1, False, True),
    ("qwen3", "bfloat16", "sdpa_packed", "lora", ["all-linear"], 0.0, True, True),
])
def test_activation_formula_equals_the_tensors_autograd_saves(arch, dtype, attn, method, targets, dropout, autocast,
                                                              packed, recompute):
    """Exactly, byte for byte: what layer_activation_bytes predicts per layer and token is what autograd keeps in
    transformers' Llama and Qwen3 layers (CPU; autocast as accelerate applies it on a GPU), plain and with the
    trainer's recomputed activations (train/kernels/recompute.py)."""
    measured, config = _saved_per_layer_and_token(arch, dtype, attn, method, targets, dropout, autocast, packed,
                                                  recompute)
    shape = S.shape_from_config(config.to_dict(), arch)
    cfg = make_cfg(method=method, dtype=dtype, seq=32, r=8, targets=targets, dropout=dropout, attn=attn, packing=packed)
    p = P.precision(cfg, P.Hardware(device="cuda" if autocast else "cpu"), "ddp", P.Assumptions())
    p = replace(p, cuda=False)  # measured on a CPU: dropout masks in the input's dtype (1-byte booleans on a GPU)
    assert p.autocast == autocast
    assert sum(P.layer_activation_bytes(shape, cfg, p, micro_batch=1, recompute=recompute,
                                        attention=attn).values()) == measured


def test_4bit_weights_take_the_bytes_bitsandbytes_allocates(tmp_path):
    """NF4 with and without double quantisation: the base's bytes (4-bit data, absmax, code books, the fp32 rest)
    equal what train/model.py's real loading allocates through bitsandbytes on this CPU."""
    from launch.assets import tiny_model_dir
    from train.model import load_base_model

    folder = tiny_model_dir(tmp_path / "m", hidden=512)  # large enough that per-tensor code books are noise
    for double_quant in (True, False):
        cfg = make_cfg(method="qlora", dtype="float32", double_quant=double_quant)
        cfg.model.name_or_path = str(folder)
        cfg.qlora.compute_dtype = "float32"
        model = load_base_model(cfg)
        seen = {}
        for param in model.parameters():
            tensors = [param.data]
            state = getattr(param, "quant_state", None)
            if state is not None:  # the state's own tensors: as_dict() would hand back a temporary copy of the
                # nested code book, whose address the allocator reuses for the next one
                tensors += [state.absmax, state.code]
                if state.nested:
                    tensors += [state.offset, state.state2.absmax, state.state2.code]
            for t in tensors:  # by tensor, not storage: small weights may be views into one loading buffer
                seen[t.data_ptr()] = t.numel() * t.element_size()
        shape = S.read_shape(str(folder))
        p = P.precision(cfg, P.Hardware(device="cpu"), "ddp", P.Assumptions())
        predicted, quantised = P.base_weight_bytes(shape, cfg, p)
        assert predicted == pytest.approx(sum(seen.values()), rel=1e-4), double_quant
        assert quantised / shape.parameters().linear == pytest.approx(0.516 if double_quant else 0.5625, abs=0.005)


# ---------------------------------------------------------------------------------------------------------------------
# Predicted vs measured peak memory of real training runs (CPU)
# ---------------------------------------------------------------------------------------------------------------------


def build_llama_dir(path: Path, hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int,
                    vocab: int) -> Path:
    """A random fp32 Llama of the given shape with the tiny BPE tokenizer (vocab >= the tokenizer's), as a folder."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from launch.assets import tiny_tokenizer

    if (path / "config.json").exists():
        return path
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_recipe(folder: Path, model_dir: Path, conversations: int = 160, **train) -> Path:
    from tests.tiny_model import write_conversations

    folder.mkdir(parents=True, exist_ok=True)
    data = write_conversations(folder / "train.jsonl", n=conversations)
    cfg = {"model": {"name_or_path": str(model_dir), "dtype": "float32"}, "method": "lora",
           "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "qlora": {"compute_dtype": "float32"},
           "data": {"sources": [{"path": str(data), "format": "messages"}], "validation_split": 0.0,
                    "overlong": "split", "cache_dir": str(folder / "cache")},
           "train": {"max_steps": 2, "learning_rate": 1e-4, "logging_steps": 1, "save_steps": 1000,
                     "warmup_ratio": 0.0, "lr_scheduler": "constant", **train},
           "output_dir": str(folder / "out")}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def measure_peaks(jobs: list) -> list:
    """Run train/sft.py's training for each (recipe, overrides) in tests/peak_memory.py (imports once, one forked
    process per run) and return each run's peak memory growth above the level it started at. glibc's mmap threshold
    is fixed at 64 KiB so that freed tensor memory goes back to the system at once: by default glibc keeps freed
    blocks below 32 MiB in its heap and RSS follows the history of allocations (about 1.5x the live peak after a few
    steps of the LoRA run here), not what is alive."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MALLOC_MMAP_THRESHOLD_": "65536"}
    args = ["::".join([str(recipe), *overrides]) for recipe, overrides in jobs]
    res = subprocess.run([sys.executable, str(REPO / "tests/peak_memory.py"), *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    results = [json.loads(line.split(" ", 1)[1]) for line in res.stdout.splitlines() if line.startswith("PEAK_MEMORY ")]
    assert len(results) == len(jobs)
    return results


def predict_peak(recipe: Path, *overrides: str) -> "P.Estimate":
    """The planner's CPU estimate for the same recipe, with the label fraction of the data the run prepared."""
    cfg = load_config(recipe, list(overrides))
    reports = list(Path(cfg.data.cache_dir).glob("*/report.json"))
    assert len(reports) == 1, reports
    a = P.Assumptions(label_fraction=DataReport.from_dict(json.loads(reports[0].read_text())).label_fraction())
    hw = P.Hardware(device="cpu", gpu_mem_gib=64)
    return P.estimate(S.read_shape(cfg.model.name_or_path), cfg, hw, "ddp", cfg.train.per_device_batch_size,
                      cfg.train.gradient_checkpointing, cfg.train.gradient_accumulation_steps, a)


# name: (model, overrides); "wide": weights, gradients and Adam states dominate; "narrow" and deep: activations do
MEASURED = {
    "full": ("wide", ["method=full", "data.max_length=64", "train.per_device_batch_size=1"]),
    "lora": ("narrow", ["data.max_length=256", "train.per_device_batch_size=8", "lora.dropout=0.1"]),
    "lora-checkpointing": ("narrow", ["data.max_length=256", "train.per_device_batch_size=16",
                                      "train.gradient_checkpointing=true"]),
    "qlora": ("smollm2", ["method=qlora", "data.max_length=64", "train.per_device_batch_size=2", "train.max_steps=1"]),
}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """{name: (recipe, overrides, measured growth)} for the runs in MEASURED, measured in one subprocess."""
    from launch.assets import smollm2_135m_instruct

    root = tmp_path_factory.mktemp("plan-measured")
    models = {"wide": build_llama_dir(root / "wide", hidden=512, layers=4, intermediate=1536, heads=8, kv_heads=2,
                                      vocab=16384),
              "narrow": build_llama_dir(root / "narrow", hidden=128, layers=8, intermediate=512, heads=4, kv_heads=2,
                                        vocab=2048),
              "smollm2": smollm2_135m_instruct()}
    jobs = [(write_recipe(root / name, models[model]), overrides) for name, (model, overrides) in MEASURED.items()]
    results = measure_peaks(jobs)
    return {name: (recipe, overrides, r) for name, (recipe, overrides), r in zip(MEASURED, jobs, results)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MEASURED))
def test_predicted_peak_memory_is_within_20_percent_of_a_real_run(measured, name):
    """Full fine-tuning, LoRA with dropout, LoRA with gradient checkpointing and QLoRA (SmolLM2-135M, 4-bit through
    bitsandbytes on the CPU): train/sft.py's real training, fp32 on the CPU, peak memory growth vs the planner."""
    recipe, overrides, run = measured[name]
    predicted = predict_peak(recipe, *overrides)
    ratio = predicted.total / run["growth"]
    print(f"{name}: predicted {predicted.total / 2**20:.0f} MiB, measured {run['growth'] / 2**20:.0f} MiB "
          f"(ratio {ratio:.2f}, run {run['seconds']} s); parts (MiB): "
          f"{ {k: round(v / 2**20) for k, v in predicted.parts.items() if v} }")
    assert 0.8 <= ratio <= 1.2


# ---------------------------------------------------------------------------------------------------------------------
# Published figures
# ---------------------------------------------------------------------------------------------------------------------


def test_cuda_device_names_map_to_their_card():
    """torch.cuda.get_device_name() as the cards report it -> the GPUS entry whose peak the plan and the throughput
    benchmark use (one table for both), the most specific variant first; "" for a card the table does not know."""
    names = {"NVIDIA H100 80GB HBM3": "h100", "NVIDIA H100 PCIe": "h100-pcie", "NVIDIA H100 NVL": "h100-nvl",
             "NVIDIA H200": "h200", "NVIDIA A100-SXM4-80GB": "a100", "NVIDIA A100-SXM4-40GB": "a100-40gb",
             "NVIDIA A100 80GB PCIe": "a100", "NVIDIA L40S": "l40s", "NVIDIA RTX A6000": "a6000",
             "NVIDIA GeForce RTX 4090": "rtx4090", "NVIDIA A10G": "a10g", "Tesla V100-SXM2-32GB": "",
             "NVIDIA GeForce GTX 1080": ""}
    assert {name: P.gpu_key(name) for name in names} == names
    assert P.GPUS["h100-nvl"].bf16_tflops == 835.0 and P.GPUS["h100"].bf16_tflops == 989.0


def test_qlora_paper_65b_fits_one_48gb_gpu():
    """QLoRA paper (arXiv 2305.14314): LLaMA-65B fine-tunes on one 48 GB GPU; its memory breakdown comes to about
    41 GB (4-bit NF4 base with double quantisation, LoRA r=64 on every linear layer, batch 1 x 512 tokens with
    gradient checkpointing; the paged AdamW states move to CPU RAM when the GPU is full).
    Assumptions to match its code (qlora.py): LoRA weights and gradients in bf16 and the embeddings / output layer cast
    back to bf16 (this project's trainer keeps peft's fp32 for both); the figure counts tensors, so the planner's
    tensor peak is compared, without CUDA context and allocator fragmentation."""
    shape = S.shape_from_config(LLAMA1_65B, "llama-65b")
    assert shape.parameters().total == pytest.approx(65.2e9, rel=0.01)
    cfg = make_cfg(method="qlora", seq=512, r=64, dropout=0.05, optim="paged_adamw_32bit", checkpointing=True)
    paper = P.Assumptions(adapter_dtype="bfloat16", non_quantized_dtype="bfloat16")
    e = P.estimate(shape, cfg, P.hardware("a6000"), "ddp", 1, True, 16, paper)
    assert e.peak / GB == pytest.approx(41, rel=0.15)
    assert e.fits  # with 1 GiB of CUDA context and 10% fragmentation on top, on a 48 GB card
    # this project's trainer (fp32 adapters, gradients and embeddings) needs more at r=64 and fits at r=16
    ours = P.estimate(shape, cfg, P.hardware("a6000"), "ddp", 1, True, 16)
    assert ours.total > e.total and not ours.fits
    assert P.estimate(shape, replace(cfg, lora=LoraSettings(r=16, dropout=0.05)), P.hardware("a6000"), "ddp", 1, True,
                      16).fits


@pytest.mark.parametrize("method,gpus,strategy,published_gb", [
    ("qlora", 1, "ddp", 48),
    ("lora", 2, "zero3", 160),
    ("full", 16, "zero3", 1200),
])
def test_llama_factory_70b_memory_table(method, gpus, strategy, published_gb):
    """LLaMA-Factory's README table, 70B: QLoRA 4-bit 48 GB, LoRA (bf16) 160 GB, full bf16 (mixed precision) 1200 GB:
    estimates of the GPU memory the whole job needs, matching one 48 GB GPU, 2 x 80 GB and about 16 x 80 GB.
    Assumptions: LLaMA-Factory's defaults (LoRA rank 8 on all linear layers, no LoRA dropout, cutoff_len 2048 tokens,
    per-device batch 1, gradient checkpointing, AdamW, bf16), DeepSpeed ZeRO-3 when the model is split over GPUs, a
    Llama-2-70B shape; the job's memory is the sum of the planner's per-GPU tensor peaks on that many GPUs (an estimate
    table leaves CUDA context and allocator fragmentation out)."""
    shape = S.shape_from_config(LLAMA2_70B, "llama-2-70b")
    cfg = make_cfg(method=method, seq=2048, r=8, dropout=0.0, checkpointing=True, accumulation=8)
    hw = P.Hardware(nodes=max(1, gpus // 8), gpus_per_node=min(gpus, 8), gpu_mem_gib=80)
    e = P.estimate(shape, cfg, hw, strategy, 1, True, 8)
    assert e.peak * gpus / GB == pytest.approx(published_gb, rel=0.15)


def test_peft_docs_70b_qlora_zero3_on_two_gpus():
    """PEFT's docs (QLoRA with DeepSpeed ZeRO-3): Llama-2-70B on 2 GPUs used 36.6 GB per GPU (their script: r=8 on all
    linear layers, 2048 tokens, per-device batch 2, gradient checkpointing, bf16 4-bit storage). The planner's tensor
    peak for that run is the loading one: transformers puts the whole 4-bit base on every GPU before DeepSpeed
    partitions it (this README's finding on a CPU); the training peak after partitioning is lower."""
    shape = S.shape_from_config(LLAMA2_70B, "llama-2-70b")
    cfg = make_cfg(method="qlora", seq=2048, r=8, dropout=0.1, checkpointing=True, micro_batch=2)
    e = P.estimate(shape, cfg, P.Hardware(gpus_per_node=2, gpu_mem_gib=80), "zero3", 2, True, 1)
    assert e.peak / GB == pytest.approx(36.6, rel=0.15)
    assert e.parts["loading: whole 4-bit base"] == e.peak


# ---------------------------------------------------------------------------------------------------------------------
# Decisions: what fits, the recommendation, the nearest setting that fits
# ---------------------------------------------------------------------------------------------------------------------


def test_recommendation_prefers_the_least_sharding_and_the_fastest_setting_that_fits():
    shape = S.read_shape("llama3-8b")
    lora = make_cfg(method="lora", seq=4096, micro_batch=1, accumulation=16)
    p = P.make_plan(shape, lora, P.hardware("h100"))
    c = p.recommended
    assert c.estimate.strategy == "ddp" and c.global_batch == 16 and c.estimate.micro_batch * c.grad_accum == 16
    assert c.estimate.fits and not c.estimate.checkpointing  # fits without recomputation: that is faster
    bigger = P.estimate(shape, lora, P.hardware("h100"), "ddp", c.estimate.micro_batch * 2, False, 1)
    assert not bigger.fits  # the largest micro-batch that fits was chosen
    # the breakdown: 15 GiB of bf16 weights; checkpointing cuts activations
    ddp, ddp_ckpt = p.table["ddp"]
    assert ddp.parts["base weights"] / P.GIB == pytest.approx(8.03e9 * 2 / P.GIB, rel=1e-3)
    assert ddp_ckpt.parts["activations"] < ddp.parts["activations"] / 5
    # full fine-tuning of 8B: 16 bytes per parameter of states cannot stay on one 80 GB GPU; on 8 they are sharded
    full = make_cfg(method="full", seq=4096, micro_batch=1, accumulation=8)
    assert P.make_plan(shape, full, P.hardware("h100")).recommended.estimate.strategy == "zero3_offload"
    assert P.make_plan(shape, full, P.hardware("h100", gpus_per_node=8)).recommended.estimate.strategy == "zero2"
    # step time from the FLOP count: 4N + attention for LoRA, 6N for full, at the stated MFU
    n_matmul = shape.parameters().linear + shape.vocab * shape.hidden
    assert p.flops_per_token == pytest.approx(4 * n_matmul + 6 * 41_943_040 + 6 * 4096 * 4096 * 32, rel=1e-6)
    assert p.assumptions.mfu == METHODS["lora"].mfu  # the method's assumption: no measurement for h100 in the repo
    assert p.tokens_per_second == pytest.approx(989e12 * p.assumptions.mfu / p.flops_per_token, rel=1e-6)
    assert p.attention == "varlen_packed"  # packed rows on a GPU: attention per sample, the causal half skipped


def test_nearest_fit_when_the_recipe_does_not_fit():
    shape = S.read_shape("llama3-8b")
    cfg = make_cfg(method="lora", seq=4096, micro_batch=8, accumulation=2)  # 16 sequences per step on one GPU
    p = P.make_plan(shape, cfg, P.hardware("h100"), requested_strategy="ddp")
    assert not p.requested.estimate.fits
    what, choice = p.nearest
    assert what.startswith("micro-batch") and choice.estimate.fits and choice.estimate.strategy == "ddp"
    assert choice.estimate.micro_batch * choice.grad_accum == 16  # the global batch is kept
    assert "DOES NOT FIT" in P.render(p) and "nearest fit" in P.render(p)
    # a 70B QLoRA does not fit one 48 GB card: at least two, sharded with ZeRO-3 or FSDP
    big = S.read_shape("llama3-70b")
    q = make_cfg(method="qlora", seq=1024, checkpointing=True)
    p = P.make_plan(big, q, P.hardware("l40s"), requested_strategy="ddp")
    assert p.recommended is None and p.nearest is None and p.min_gpus >= 2
    p2 = P.make_plan(big, q, P.hardware("l40s", gpus_per_node=p.min_gpus), global_batch=p.min_gpus)
    assert p2.recommended.estimate.strategy in ("zero3", "fsdp")
    # on 24 GB cards never: the whole 4-bit base (37 GiB) is loaded onto every GPU before ZeRO-3 or FSDP shard it
    p = P.make_plan(big, q, P.hardware("rtx4090"), requested_strategy="ddp")
    assert p.recommended is None and p.min_gpus is None
    assert "QLoRA loads the whole 4-bit base (36.8 GiB) onto every GPU" in P.render(p)


def test_strategy_from_the_accelerate_environment():
    assert M.launched_strategy({}) == "ddp"
    assert M.launched_strategy({"ACCELERATE_USE_FSDP": "true"}) == "fsdp"
    for name in ("zero2", "zero3", "zero3_offload"):
        env = {"ACCELERATE_USE_DEEPSPEED": "true",
               "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(REPO / f"configs/deepspeed/{name}.json")}
        assert M.launched_strategy(env) == name


def test_check_memory_refuses_on_a_gpu_with_the_nearest_fit_and_the_recipe_can_override():
    from train.config import ConfigError

    cfg = make_cfg(method="full", seq=2048, micro_batch=8)
    cfg.model.name_or_path = "llama3-8b"
    with pytest.raises(ConfigError) as err:  # full fine-tuning of 8B on one 80 GB GPU under plain DDP
        M.check_memory(cfg, env={}, hw=P.hardware("h100"))
    message = str(err.value)
    assert "DOES NOT FIT" in message and "nearest setting that fits: use zero3_offload" in message
    assert "train.memory_check=false" in message
    zero3 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "configs/deepspeed/zero3.json"}
    with pytest.raises(ConfigError, match="gradient checkpointing"):  # 8 GPUs sharding: only activations to cut
        M.check_memory(cfg, env=zero3, hw=P.hardware("h100", gpus_per_node=8))
    cfg.train.gradient_checkpointing = True
    assert M.check_memory(cfg, env=zero3, hw=P.hardware("h100", gpus_per_node=8)).requested.estimate.fits
    cfg.train.memory_check = False
    assert M.check_memory(cfg, env={}, hw=P.hardware("h100")) is None
    # unpacked rows are padded to the longest sample of their batch: planned at the longest prepared sample, with the
    # prepared data's share of label tokens
    cfg = make_cfg(method="lora", seq=2048, packing=False)
    cfg.model.name_or_path = "llama3-8b"
    report = DataReport(packing={"rows": 100, "label_tokens": 5000, "max_length": 2048}, token_lengths={"max": 500})
    plan = M.check_memory(cfg, report, env={}, hw=P.hardware("h100"))
    assert plan.seq_len == 500 and cfg.data.max_length == 2048 and plan.assumptions.label_fraction == 0.1


# ---------------------------------------------------------------------------------------------------------------------
# python -m launch plan, train/sft.py, python -m launch run
# ---------------------------------------------------------------------------------------------------------------------


def test_cli_plans_in_well_under_two_seconds_without_importing_torch():
    code = ("import sys, time, json, io, contextlib; t = time.time(); from launch.__main__ import main\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out): rc = main(['plan', '--model', 'llama3-70b', '--method', 'qlora', "
            "'--gpus-per-node', '8', '--gpu', 'h100', '--seq-len', '4096', '--json'])\n"
            "print(json.dumps({'rc': rc, 'seconds': time.time() - t, 'plan': json.loads(out.getvalue()), "
            "'heavy': [m for m in ('torch', 'transformers', 'peft', 'deepspeed') if m in sys.modules]}))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["rc"] == 0 and out["heavy"] == [] and out["seconds"] < 2.0, out["seconds"]
    plan = out["plan"]
    assert plan["recommended"]["accelerate"] == "multi_gpu" and plan["recommended"]["fits"]
    assert plan["model"]["parameters"] == S.read_shape("llama3-70b").parameters().total
    assert set(plan["strategies"]) == {"ddp", "zero2", "zero3", "zero3_offload", "fsdp"}
    assert plan["strategies"]["zero3_offload"]["no_checkpointing"]["supported"] is False  # no 4-bit offload


def test_cli_plans_a_recipe_and_names_bad_input(tmp_path):
    res = subprocess.run([sys.executable, "-m", "launch", "plan", "--config", "configs/recipes/qwen3_8b_mna_lora.yaml",
                          "--model", "qwen3-8b", "--gpu", "a100", "--gpus-per-node", "2"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "qwen3-8b: 8.19B parameters" in res.stdout and "global batch 16 sequences" in res.stdout  # 1 x 8 x 2
    assert "recommended  multi_gpu" in res.stdout
    for args, message in ((["--model", "no/such-model"], "cannot read the config"),
                          (["--model", "llama3-8b", "--gpu", "b300"], "unknown GPU"),
                          (["--model", "llama3-8b", "--gpus-per-node", "3", "--global-batch", "16"],
                           "not a multiple of the 3 GPUs"),
                          (["--model", "llama3-8b", "lora.rank=8"], "lora.rank")):
        res = subprocess.run([sys.executable, "-m", "launch", "plan", *args], cwd=REPO, capture_output=True,
                             text=True, timeout=60, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_sft_refuses_a_run_predicted_not_to_fit_before_loading_the_model(tmp_path):
    """A 70B full fine-tuning on this CPU machine: train/sft.py stops after preparing the data, before any weight is
    read (the folder has none), with exit code 2 and the plan; train.memory_check=false lets it go on to loading."""
    from launch.assets import tiny_tokenizer

    model = tmp_path / "llama3-70b"
    model.mkdir()
    (model / "config.json").write_text((REPO / "configs/models/llama3-70b.json").read_text())
    (model / "model.safetensors").write_bytes(b"")  # a placeholder: the model folder check wants weights to exist
    tiny_tokenizer().save_pretrained(model)
    recipe = write_recipe(tmp_path / "run", model, conversations=8)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([sys.executable, "train/sft.py", "--config", str(recipe), "method=full"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "DOES NOT FIT" in res.stderr and "train.memory_check=false" in res.stderr and "Traceback" not in res.stderr
    assert "recommended" in res.stderr or "nothing fits" in res.stderr
    res = subprocess.run([sys.executable, "train/sft.py", "--config", str(recipe), "method=full",
                          "train.memory_check=false"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert "memory check: skipped (train.memory_check=false)" in res.stdout and "DOES NOT FIT" not in res.stderr
    assert res.returncode != 0 and "safetensors" in (res.stdout + res.stderr)  # it went on to load the (absent) weights


def test_launch_run_takes_the_planners_recommendation():
    """One memory model: launch run's choice is the plan's recommended strategy, for a config.json and for a size."""
    from launch.run import choose

    for method, gpus, gib in (("full", 8, 80), ("lora", 1, 24), ("qlora", 2, 24), ("lora", 8, 80)):
        cfg = load_config(REPO / "configs/recipes/demo_cpu.yaml", [f"method={method}", "model.name_or_path=llama3-8b"])
        shape = S.read_shape("llama3-8b")
        hw = P.Hardware(gpus_per_node=gpus, gpu_mem_gib=gib)
        plan = P.make_plan(shape, cfg, hw)
        assert choose(cfg, gpus, gib, shape)[0] == P.strategy_label(plan.recommended.estimate.strategy, hw)


# ---------------------------------------------------------------------------------------------------------------------
# What really runs: the attention, the MFU per method, how QLoRA and FSDP load
# ---------------------------------------------------------------------------------------------------------------------


def test_speed_line_uses_the_attention_the_run_uses_and_the_mfu_per_method(tmp_path, monkeypatch):
    shape = S.read_shape("llama3-8b")
    packed = P.make_plan(shape, make_cfg(method="lora", seq=4096), P.hardware("h100"), global_batch=16)
    assert packed.attention == "varlen_packed" and "varlen_attn" in P.render(packed)
    eager = P.make_plan(shape, make_cfg(method="lora", seq=4096, attn="eager"), P.hardware("h100"), global_batch=16)
    assert eager.attention == "eager" and "attention: eager" in P.render(eager)
    cfg, a = make_cfg(method="lora", seq=4096), P.Assumptions(mfu=0.3)
    causal = 6 * 4096 * shape.q_dim * shape.layers  # per token, a causal kernel, forward + backward
    assert P.flops_per_token(shape, cfg, False, a, "eager") - P.flops_per_token(shape, cfg, False, a, "varlen_packed") \
        == pytest.approx(causal, rel=1e-9)  # a masked whole-row attention does not skip the causal half
    # per method: assumed (train/methods.py) until scripts/gpu_check.sh measured it on the GPU (configs/mfu.json)
    table = json.loads(P.MFU_FILE.read_text())
    for method in ("full", "lora", "qlora"):
        mfu, source = P.model_flop_utilisation(method, "h100")
        assert mfu == METHODS[method].mfu and source.startswith("assumed")
    assert METHODS["lora"].mfu < 0.40  # HF Trainer + PEFT in eager bf16 rarely reaches 40%
    measured = {**table, "measured": {"h100": {"lora": {"mfu": 0.33, "date": "2026-12-07"}}}}
    (tmp_path / "mfu.json").write_text(json.dumps(measured))
    monkeypatch.setattr(P, "MFU_FILE", tmp_path / "mfu.json")
    plan = P.make_plan(shape, make_cfg(method="lora", seq=4096), P.hardware("h100"), global_batch=16)
    assert plan.assumptions.mfu == 0.33 and "measured on h100" in P.render(plan)
    assert P.make_plan(shape, make_cfg(method="lora", seq=4096), P.hardware("a100"), global_batch=16) \
        .assumptions.mfu == METHODS["lora"].mfu  # measured on another GPU: not this one's
    given = P.make_plan(shape, make_cfg(method="lora", seq=4096), P.hardware("h100"), P.Assumptions(mfu=0.5), 16)
    assert given.assumptions.mfu == 0.5


def test_qlora_under_fsdp_counts_the_whole_4bit_base_at_load_and_fsdp_the_cpu_ram_per_node():
    """As under ZeRO-3, transformers quantises the whole base onto every GPU before FSDP shards it; and every rank
    reads the whole model into CPU RAM (fsdp_cpu_ram_efficient_loading did not prevent it in a 2-rank trial)."""
    shape = S.read_shape("llama3-70b")
    cfg = make_cfg(method="qlora", seq=2048)
    hw = P.hardware("h100", gpus_per_node=8)
    for strategy in ("zero3", "fsdp"):
        e = P.estimate(shape, cfg, hw, strategy, 1, True)
        loading = e.parts["loading: whole 4-bit base"]
        counts = shape.parameters()
        assert loading / P.GIB == pytest.approx((counts.linear * 0.516 + counts.non_quantized * 2) / P.GIB, rel=0.01)
        assert e.peak >= loading
    plan = P.make_plan(shape, cfg, hw, global_batch=8)
    text = P.render(plan)
    assert "QLoRA under ZeRO-3 and FSDP" in text and "CPU RAM" in text
    assert f"{8 * shape.parameters().total * 2 / P.GIB:.1f} GiB of CPU RAM per node" in " ".join(text.split())
