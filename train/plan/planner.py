"""Memory and throughput planner: will a run fit, with which strategy, micro-batch and gradient accumulation, and how
fast will it go, before any weight is loaded.

    shape = read_shape("configs/models/llama3-8b.json")      # train/plan/shape.py: config.json only, no weights
    p = make_plan(shape, cfg, hardware("h100", gpus_per_node=8))   # cfg: a train.config.Config (the recipe)
    print(render(p))

`python -m launch plan` prints it (launch/plan.py); train/sft.py checks a run with it (train/plan/check.py);
`python -m launch run` takes its accelerate configuration from it (launch/run.py).

What is counted per GPU (bytes), for DDP, ZeRO-2, ZeRO-3, ZeRO-3 with CPU offload and FSDP:
- weights: the base in the model dtype, or 4-bit NF4/FP4 (0.5 byte per parameter plus the quantisation constants:
  one absmax per 64 weights, 8-bit with double quantisation, plus per-tensor code books) for every linear layer of
  the decoder; embeddings, norms and the output layer stay 16/32-bit (under QLoRA without DeepSpeed they are fp32:
  peft's prepare_model_for_kbit_training upcasts them);
- adapters: LoRA A and B for the targeted linear layers (fp32: peft keeps adapters in fp32; DeepSpeed casts them to
  the model dtype), plus trainable copies of `lora.modules_to_save`;
- gradients, optimizer states (AdamW: two states; 8-bit optimizers: 2 bytes; paged optimizers may move to CPU RAM and
  are not counted against the GPU), fp32 master weights (DeepSpeed), what ZeRO-3/FSDP gather and the communication
  buckets (read from configs/deepspeed/*.json);
- activations saved for the backward pass, per decoder layer and token, from what autograd keeps in transformers'
  Llama-style layers (checked tensor by tensor in tests/test_plan.py), with and without gradient checkpointing (without
  it, as the trainer runs: gated MLPs keep two intermediate-width tensors fewer and fp32 RMSNorm outputs are
  recomputed, train/kernels/recompute.py), plus
  the loss: 12 bytes x vocabulary x label tokens (fp32 logits, log-softmax and their gradients at once);
- the peak of a step: static memory + the larger of (forward/backward: activations and gradients) and (optimizer
  step: gradients and its temporaries);
- framework overhead: on a GPU the CUDA context and library workspaces and the caching allocator's fragmentation;
  on a CPU the Python objects the Trainer creates (see Assumptions).

Step time and tokens/s come from the FLOP count at a stated utilisation (MFU) of the GPU's dense bf16 peak.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Tuple

from train.methods import METHODS, method_of
from train.plan.shape import ModelShape, PlanError, lora_parameters, lora_targets, trainable_parameters

from train.paths import DEEPSPEED_DIR, GIB, MFU_FILE, MIB  # noqa: F401 (GIB: the planner's unit, used by others)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
STRATEGIES = ("ddp", "zero2", "zero3", "zero3_offload", "fsdp")
PREFERENCE = ("ddp", "zero2", "zero3", "fsdp", "zero3_offload")  # least communication first; offload is slowest
ACCELERATE_NAME = {"zero2": "zero2", "zero3": "zero3", "zero3_offload": "zero3_offload", "fsdp": "fsdp2"}


# ----------------------------------------------------------------------------------------------------------------------
# GPUs: dense bf16 tensor-core peak (no sparsity) and memory as the driver reports it
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    bf16_tflops: float


GPUS = {
    "a100": Gpu("A100 80GB", 80.0, 312.0),
    "a100-40gb": Gpu("A100 40GB", 40.0, 312.0),
    "h100": Gpu("H100 SXM 80GB", 79.6, 989.0),
    "h100-pcie": Gpu("H100 PCIe 80GB", 79.6, 756.0),
    "h100-nvl": Gpu("H100 NVL 94GB", 93.6, 835.0),
    "h200": Gpu("H200 141GB", 140.4, 989.0),
    "l40s": Gpu("L40S 48GB", 45.0, 362.0),
    "a6000": Gpu("RTX A6000 48GB", 48.0, 154.8),
    "rtx4090": Gpu("RTX 4090 24GB", 24.0, 165.2),
    "a10g": Gpu("A10G 24GB", 22.5, 125.0),
}  # memory as CUDA reports it; dense bf16 tensor-core peaks from the vendors' data sheets


@dataclass(frozen=True)
class Hardware:
    """Where the run goes: `device` cuda (GPUs of `gpu_mem_gib` each) or cpu (`gpu_mem_gib` = RAM per process)."""

    nodes: int = 1
    gpus_per_node: int = 1
    gpu_mem_gib: float = 80.0
    gpu: str = "custom"
    tflops: float = 989.0
    device: str = "cuda"
    key: str = ""  # the GPUS key ("h100", ...) when the card is a known one: measured MFU is looked up by it

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


def hardware(gpu: Optional[str] = None, nodes: int = 1, gpus_per_node: int = 1, gpu_mem_gib: Optional[float] = None,
             tflops: Optional[float] = None) -> Hardware:
    """Hardware from a GPU name in GPUS (or none) plus explicit memory / TFLOP/s, which win over the table."""
    if nodes < 1 or gpus_per_node < 1:
        raise PlanError(f"--nodes {nodes} --gpus-per-node {gpus_per_node}: both must be at least 1")
    known = GPUS.get((gpu or "").lower().replace(" ", "")) if gpu else None
    if gpu and known is None:
        raise PlanError(f"--gpu {gpu}: unknown GPU. Choose one of {', '.join(GPUS)}, or give --gpu-mem GiB and "
                        f"--gpu-tflops T (dense bf16 peak) for another card")
    mem = gpu_mem_gib or (known.memory_gib if known else GPUS["h100"].memory_gib)
    # --gpu-mem alone names no card: its speed is unknown (0: no step time), never an H100's by default
    peak = tflops or (known.bf16_tflops if known else (0.0 if gpu_mem_gib else GPUS["h100"].bf16_tflops))
    name = known.name if known else ("custom" if (gpu_mem_gib or tflops) else GPUS["h100"].name)
    key = (gpu or "").lower().replace(" ", "") if known else ("" if (gpu_mem_gib or tflops) else "h100")
    return Hardware(nodes=nodes, gpus_per_node=gpus_per_node, gpu_mem_gib=mem, gpu=name, tflops=peak, key=key)


def gpu_key(device_name: str) -> str:
    """The GPUS key of a CUDA device name ("NVIDIA H100 80GB HBM3" -> "h100", "NVIDIA H100 PCIe" -> "h100-pcie",
    "NVIDIA A100-SXM4-40GB" -> "a100-40gb"); "" for a card the table does not know."""
    words = device_name.upper().replace("-", " ").split()
    words += [a + b for a, b in zip(words, words[1:])]  # "RTX 4090" -> RTX4090
    for key in sorted(GPUS, key=len, reverse=True):  # the most specific first: h100-pcie before h100
        family, *variant = key.upper().split("-")
        if family in words and all(v in words for v in variant):
            return key
    return ""


def model_flop_utilisation(method: str, gpu_key: str = "") -> Tuple[float, str]:
    """(MFU, where it comes from) for a method on a GPU: what scripts/gpu_check.sh measured on that GPU
    (configs/mfu.json) when there is a measurement, else the method's assumption (train/methods.py)."""
    measured = (json.loads(MFU_FILE.read_text(encoding="utf-8")).get("measured") or {}).get(gpu_key, {}).get(method)
    if measured:
        return float(measured["mfu"]), f"measured on {gpu_key} by scripts/gpu_check.sh, {measured.get('date', '?')}"
    return METHODS[method].mfu, "assumed (train/methods.py; scripts/gpu_check.sh measures it, configs/mfu.json)"


@dataclass(frozen=True)
class Assumptions:
    """Everything the estimate assumes that is not in the recipe; printed with every plan."""

    mfu: Optional[float] = None  # model FLOP utilisation of the dense bf16 peak; None: per method, configs/mfu.json
    cuda_context_gib: float = 1.0  # CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers, per GPU
    fragmentation: float = 0.10  # caching allocator: reserved minus allocated, as a share of the tensor peak
    cpu_overhead_mib: float = 60.0  # CPU: Trainer, accelerate, tokenizer and data loader objects (measured, tests)
    label_fraction: float = 1.0  # share of tokens that carry a label: logits are computed only there
    # dtypes as this project's trainer has them unless set (to plan a peer's setup): LoRA adapters fp32 (peft), the
    # model dtype under DeepSpeed; QLoRA's embeddings, norms and output layer fp32 (prepare_model_for_kbit_training)
    adapter_dtype: Optional[str] = None
    non_quantized_dtype: Optional[str] = None

    def lines(self) -> List[str]:
        return [
            f"utilisation {self.mfu or 0:.0%} of the dense bf16 peak (MFU); FLOPs per token: 6N full, 4N LoRA/QLoRA "
            f"(frozen base: no weight gradients) + 2N with gradient checkpointing, N = parameters in matrix "
            f"multiplications, plus attention 6 x seq x heads x head_dim x layers (8 with checkpointing; twice that "
            f"for a masked attention over whole rows, which cannot skip the causal half); "
            f"communication, offload and dequantisation time are not modelled",
            f"per GPU: {self.cuda_context_gib:g} GiB for the CUDA context and library workspaces, plus "
            f"{self.fragmentation:.0%} of the tensor peak for allocator fragmentation; CPU runs: "
            f"{self.cpu_overhead_mib:g} MiB of framework objects",
            f"{self.label_fraction:.0%} of the tokens carry a label (logits are computed only there): the loss peak "
            f"is 12 bytes x vocabulary x label tokens",
            "sequences are full rows of data.max_length (packing); attention is the one the run uses (train/kernels/attention.py: "
            "per sample for packed rows, no seq x seq matrix, unless attn_implementation=eager)",
            "AdamW states in the parameter dtype (plain PyTorch), in fp32 with fp32 master weights under DeepSpeed and "
            "FSDP; LoRA adapters in fp32 (peft), in the model dtype under DeepSpeed",
        ]


# ----------------------------------------------------------------------------------------------------------------------
# Precision: which dtype each kind of tensor has, for a method, strategy and device
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    weight: int  # bytes of the model dtype (frozen base, full fine-tuning parameters)
    act: int  # activations inside a layer (matmul outputs)
    residual: int  # the hidden states between layers (what checkpointing keeps)
    norm_out: int  # output of the norms (input of q/k/v and gate/up)
    adapter: int  # LoRA weights
    non_quantized: int  # QLoRA: embeddings, norms, output layer
    autocast: bool  # torch.autocast around the forward (accelerate's mixed precision, not under DeepSpeed)
    cuda: bool  # dropout masks are 1-byte booleans on a GPU, in the input's dtype on a CPU


def precision(cfg, hw: Hardware, strategy: str, a: Assumptions) -> Precision:
    dw = DTYPE_BYTES[cfg.model.dtype]
    deepspeed = strategy.startswith("zero")
    autocast = hw.device == "cuda" and dw == 2 and not deepspeed
    quantized = method_of(cfg).quantized_base
    upcast = quantized and not deepspeed
    non_q = DTYPE_BYTES[a.non_quantized_dtype] if a.non_quantized_dtype else (4 if upcast else dw)
    adapter = DTYPE_BYTES[a.adapter_dtype] if a.adapter_dtype else (dw if deepspeed else 4)
    return Precision(weight=dw, act=2 if autocast else dw, residual=non_q if quantized else dw,
                     norm_out=non_q if quantized else dw, adapter=adapter, non_quantized=non_q,
                     autocast=autocast, cuda=hw.device == "cuda")


# ----------------------------------------------------------------------------------------------------------------------
# Activations: bytes autograd keeps for the backward pass, per token
# ----------------------------------------------------------------------------------------------------------------------


def planned_attention(cfg, device: str) -> str:
    """The attention implementation a run of this recipe uses on `device` (train/kernels/attention.py decides for the run
    too). Where flash_attn would be installed, "flash_attention_2" runs instead of "varlen_packed": the same memory."""
    from train.kernels.attention import choose_attention

    return choose_attention(cfg.model.attn_implementation, cfg.data.packing, device, True, cfg.model.dtype,
                            flash_installed=False)


def native_gqa(cfg, micro_batch: int, attention: str) -> bool:
    """Key/value heads stay unexpanded: the per-sample attentions for packed rows and FlashAttention always; SDPA
    only without an attention mask (transformers' use_gqa_in_sdpa), i.e. one unpacked row per micro-batch."""
    from train.kernels.attention import per_sample

    if per_sample(attention):
        return True
    return attention == "sdpa" and not cfg.data.packing and micro_batch == 1


def lora_input_bytes(p: Precision, in_bytes: int, dropout: float) -> Optional[int]:
    """Bytes per input element one LoRA layer keeps for its A matrix's gradient, or None when it keeps the input
    tensor itself (shared with the other adapters reading it): peft casts the input to the adapter dtype, dropout
    makes a new tensor plus its mask, autocast makes a 16-bit copy for the matmul."""
    if dropout > 0:
        return (1 if p.cuda else p.adapter) + (2 if p.autocast else p.adapter)
    if p.autocast:
        return None if (p.adapter == 2 and in_bytes == 2) else 2
    return None if p.adapter == in_bytes else p.adapter


def layer_activation_bytes(shape: ModelShape, cfg, p: Precision, micro_batch: int,
                           recompute: bool = False, attention: Optional[str] = None) -> Dict[str, float]:
    """Per token, one decoder layer: what autograd saves, by part (tests/test_plan.py checks it against the tensors
    saved_tensors_hooks sees in transformers' Llama and Qwen3 layers). recompute: with train/kernels/recompute.py's gated MLP
    and RMSNorm outputs (the trainer's forward without gradient checkpointing): act(gate) is not kept, nor the
    product read by down_proj or an fp32 norm's output where a linear layer keeps that very tensor. `attention`: the
    implementation that runs (default: `planned_attention` on the precision's device)."""
    from train.kernels.attention import PACKED_SDPA

    attention = attention or planned_attention(cfg, "cuda" if p.cuda else "cpu")
    h, q, kv, inter, heads = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate, shape.heads
    seq = cfg.data.max_length
    full = method_of(cfg).trains_base
    names = shape.module_names
    targets = set() if full else set(lora_targets(shape, cfg.lora.target_modules))
    eager = attention == "eager"
    out: Dict[str, float] = {}

    # RMSNorm: its fp32 input (for the variance) and 1/rms; with a trainable weight also the normalised input
    norm = 4 * h + 4 + (p.residual * h if full else 0)
    out["norms"] = shape.norms_per_layer * norm
    if shape.qk_norm:  # per-head norms of queries and keys
        out["norms"] += 4 * (q + kv) + 4 * (heads + shape.kv_heads) + (p.act * (q + kv) if full else 0)

    # attention kernel: queries, keys, values, output (+ logsumexp); eager: expanded keys/values and the probabilities
    if eager:
        out["attention"] = p.act * 3 * q + heads * seq * (4 + p.act)
    else:
        gqa = native_gqa(cfg, micro_batch, attention)  # else keys/values expanded to all heads, the mask as floats
        out["attention"] = p.act * (2 * q + 2 * (kv if gqa else q)) + 4 * heads + (0 if gqa else seq * p.act)

    # inputs of the linear layers, kept for their weights' gradients (shared by layers that read the same tensor);
    # recomputed: the input is a registered tensor (an fp32 norm's output, the MLP's product), not kept when kept as is
    norm_recomputed = recompute and p.residual == 4  # the norm hook registers outputs of fp32 inputs only
    # o_proj reads the attention's output, which the kernel keeps anyway; per-sample SDPA concatenates its blocks'
    # outputs into a new tensor, which is registered for recomputation (train/kernels/packed_attention.py)
    o_shared = not eager and attention != PACKED_SDPA
    o_recomputed = attention == PACKED_SDPA and recompute
    groups = [(("q", "k", "v"), h, p.norm_out, False, norm_recomputed), (("o",), q, p.act, o_shared, o_recomputed),
              (("gate", "up"), h, p.norm_out, False, norm_recomputed), (("down",), inter, p.act, False, recompute)]
    inputs = 0.0
    lora_inner = 0.0
    for roles, width, in_bytes, shared_with_attention, recomputed in groups:
        kept_as_is = 0 if (shared_with_attention or recomputed) else width * in_bytes
        modules = [names[r] for r in roles]
        if full:
            inputs += kept_as_is
            continue
        adapted = [m for m in modules if m in targets]
        if not adapted:
            continue
        each = lora_input_bytes(p, in_bytes, cfg.lora.dropout)
        if each is None:
            inputs += kept_as_is
        else:
            inputs += len(adapted) * width * each
        lora_inner += len(adapted) * cfg.lora.r * (2 if p.autocast else p.adapter)
    out["linear inputs"] = inputs
    out["mlp"] = (2 if recompute else 3) * inter * p.act  # activation input, (activation output,) up projection
    if lora_inner:
        out["lora"] = lora_inner
    return out


def activation_bytes(shape: ModelShape, cfg, p: Precision, micro_batch: int, checkpointing: bool,
                     a: Assumptions, attention: Optional[str] = None) -> Dict[str, float]:
    """Saved activations of one micro-batch and the peak around the loss, in bytes: {'layers', 'other', 'loss'}."""
    tokens = micro_batch * cfg.data.max_length
    per_layer = sum(layer_activation_bytes(shape, cfg, p, micro_batch, recompute=not checkpointing,
                                           attention=attention).values())
    if checkpointing:  # each layer keeps its input; backward recomputes one layer at a time
        layers = shape.layers * shape.hidden * p.residual * tokens + per_layer * tokens
    else:
        layers = shape.layers * per_layer * tokens
    full = method_of(cfg).trains_base
    head_trainable = full or "lm_head" in cfg.lora.modules_to_save
    labels = a.label_fraction * tokens
    other = tokens * (24 + 4 * shape.hidden + 4 + (p.residual * shape.hidden if full else 0)  # ids, final norm
                      + 2 * shape.head_dim * p.residual)  # rotary cos/sin
    if head_trainable:
        other += labels * shape.hidden * p.norm_out
    if p.autocast and method_of(cfg).adapter:  # 16-bit copies autocast makes of fp32 weights, kept for backward
        other += 2 * lora_parameters(shape, cfg.lora.r, cfg.lora.target_modules)
        if p.non_quantized == 4:
            other += 2 * shape.vocab * shape.hidden
    return {"layers": layers, "other": other, "loss": 12 * shape.vocab * labels}


# ----------------------------------------------------------------------------------------------------------------------
# Memory per GPU, per strategy
# ----------------------------------------------------------------------------------------------------------------------


def optimizer_state_bytes(optim: str, param_bytes: int) -> Tuple[float, bool]:
    """(bytes per trainable parameter, paged) for a transformers optimizer name."""
    name = optim.lower()
    paged = name.startswith("paged")
    if "8bit" in name:
        return (1.0 if "lion" in name else 2.0), paged
    if "adafactor" in name:
        return 0.0, False  # factored second moment: rows + columns, negligible
    if name.startswith("sgd"):
        return 0.0, False
    if "lion" in name:
        return float(param_bytes), paged
    if "32bit" in name or name.startswith("paged_adamw") or "bnb" in name:
        return 8.0, paged
    return 2.0 * param_bytes, paged  # AdamW: exp_avg and exp_avg_sq like the parameter


def optimizer_step_temporary(optim: str, hw: Hardware, trainable: float, largest: float) -> float:
    """Elements the optimizer step allocates for a moment: torch AdamW's foreach path (the CUDA default) one temporary
    as large as all trainable parameters (sqrt of exp_avg_sq); its per-tensor loop (CPU) two as large as the largest
    tensor; the fused and bitsandbytes kernels none."""
    name = optim.lower()
    if "fused" in name or "8bit" in name or "bnb" in name or name.startswith(("paged", "sgd", "adafactor")):
        return 0.0
    return trainable if hw.device == "cuda" else 2 * largest


def deepspeed_settings(strategy: str, hidden: int) -> Dict[str, float]:
    """Bucket sizes (elements) from configs/deepspeed/<strategy>.json; 'auto' as transformers fills it in."""
    defaults = {"reduce_bucket_size": hidden * hidden, "stage3_max_live_parameters": 1e9,
                "stage3_prefetch_bucket_size": 0.9 * hidden * hidden, "sub_group_size": 1e9}
    path = DEEPSPEED_DIR / f"{strategy}.json"
    try:
        zero = json.loads(path.read_text())["zero_optimization"]
    except (OSError, KeyError, json.JSONDecodeError):
        return defaults
    return {k: float(zero[k]) if isinstance(zero.get(k), (int, float)) else v for k, v in defaults.items()}


@dataclass
class Estimate:
    """Memory of one GPU (or one CPU process) for a strategy, micro-batch and checkpointing setting."""

    strategy: str
    micro_batch: int
    checkpointing: bool
    parts: Dict[str, float]  # component -> bytes
    peak: float  # bytes of tensors at the peak of a step
    total: float  # peak + context + fragmentation (GPU) or + framework objects (CPU)
    limit: float  # bytes available
    cpu_per_node: float = 0.0  # offloaded states in CPU RAM per node
    supported: bool = True
    note: str = ""

    @property
    def fits(self) -> bool:
        return self.supported and self.total <= self.limit


def method_conflict(strategy: str, cfg) -> str:
    """Why QLoRA cannot run under a strategy with these settings ('' when it can); launch/run.py refuses the same."""
    if not method_of(cfg).quantized_base:
        return ""
    from train.config import resolved_quant_storage

    name = ACCELERATE_NAME.get(strategy, strategy)
    if strategy == "zero3_offload":
        return ("method=qlora cannot use zero3_offload: DeepSpeed cannot offload bitsandbytes 4-bit weights to CPU. "
                "Use zero3, or method=lora with zero3_offload")
    if strategy in ("zero3", "fsdp") and resolved_quant_storage(cfg) == "uint8":
        return (f"method=qlora under {name} needs the 4-bit weights stored in the model dtype so they can be "
                f"flattened and sharded; qlora.quant_storage=uint8 fails ('Cannot flatten integer dtype tensors'). "
                f"Set qlora.quant_storage=auto")
    if strategy == "fsdp" and cfg.qlora.compute_dtype != cfg.model.dtype:
        return (f"method=qlora under fsdp2 needs qlora.compute_dtype = model.dtype (now {cfg.qlora.compute_dtype} vs "
                f"{cfg.model.dtype}): FSDP shards one dtype. Set both to bfloat16")
    return ""


def unsupported(strategy: str, cfg, hw: Hardware) -> str:
    """Why a strategy cannot run this method on this hardware ('' when it can)."""
    conflict = method_conflict(strategy, cfg)
    if conflict:
        return conflict
    if hw.device == "cpu" and strategy == "fsdp":
        return "FSDP through accelerate does not run on a CPU"
    if hw.device == "cpu" and strategy == "zero3_offload":
        return "nothing to offload to on a CPU"
    return ""


def trainable_param_bytes(cfg, strategy: str, p: Precision) -> int:
    """Bytes of a trainable parameter as held during training: FSDP keeps them in fp32 (accelerate upcasts them for
    mixed precision); otherwise the model dtype for full fine-tuning and the adapter dtype for LoRA."""
    if strategy == "fsdp":
        return 4
    return p.weight if method_of(cfg).trains_base else p.adapter


def base_weight_bytes(shape: ModelShape, cfg, p: Precision) -> Tuple[float, float]:
    """(bytes of the frozen base, of which 4-bit) for LoRA/QLoRA; for full fine-tuning the weights are trainable."""
    counts = shape.parameters()
    if not method_of(cfg).quantized_base:
        return (shape.exact_parameters or counts.total) * p.weight, 0.0
    # one absmax per block of 64 weights: 8-bit plus an fp32 one per 256 blocks (double quantisation), or fp32;
    # per tensor a 16-value code book and, with double quantisation, a 256-value one (bitsandbytes shares some)
    constants = (1 / 64 + 4 / (64 * 256)) if cfg.qlora.double_quant else 4 / 64
    tables = (16 + (256 if cfg.qlora.double_quant else 0)) * 4 * len(shape.layer_linears()) * shape.layers
    quantised = counts.linear * (0.5 + constants) + tables
    return quantised + counts.non_quantized * p.non_quantized, quantised


def estimate(shape: ModelShape, cfg, hw: Hardware, strategy: str, micro_batch: int, checkpointing: bool,
             grad_accum: int = 1, a: Assumptions = Assumptions()) -> Estimate:
    """Bytes per GPU (or CPU process) at the peak of a training step, by component."""
    n = hw.world
    p = precision(cfg, hw, strategy, a)
    counts = shape.parameters()
    total_params = shape.exact_parameters or counts.total
    trainable = trainable_parameters(shape, cfg)
    full = method_of(cfg).trains_base
    quantized_base = method_of(cfg).quantized_base
    deepspeed = strategy.startswith("zero")
    share = 1 if strategy == "ddp" else n  # gradients and optimizer states are split over the ranks except in DDP
    tp = trainable_param_bytes(cfg, strategy, p)
    state_dtype = 4 if deepspeed else tp
    state_per, paged = optimizer_state_bytes(cfg.train.optim, state_dtype)

    base, quantised = (0.0, 0.0) if full else base_weight_bytes(shape, cfg, p)
    weights = total_params * tp if full else base
    adapters = 0.0 if full else trainable * tp
    if strategy in ("zero3", "fsdp"):
        weights, adapters = weights / n, adapters / n
    grads_all = trainable * tp
    grads = grads_all / share
    master = trainable * 4 / n if deepspeed else 0.0  # DeepSpeed's fp32 copy of this rank's partition
    states = trainable * state_per / share
    dims = shape.layer_linears().values()
    buffers = grads_all if (strategy == "ddp" and n > 1) else 0.0  # DDP's buckets: a flat copy of all gradients
    cpu_per_node = 0.0
    if deepspeed:  # the step converts this rank's gradient partition to fp32 and steps it as one flat tensor
        ds = deepspeed_settings(strategy, shape.hidden)  # (ZeRO-3: in sub-groups of sub_group_size elements)
        chunk = trainable / n if strategy == "zero2" else min(trainable / n, ds["sub_group_size"])
        step_temp = 4 * chunk + 4 * optimizer_step_temporary(cfg.train.optim, hw, chunk, chunk)
        buffers = 2 * min(ds["reduce_bucket_size"], trainable) * p.weight  # two reduce buckets (overlap_comm)
        if strategy in ("zero3", "zero3_offload"):  # parameters gathered for the layers being computed
            per_param = (base / total_params) if quantized_base else p.weight
            live = min(ds["stage3_max_live_parameters"], total_params) * per_param
            head = max(counts.embedding, counts.lm_head) * (p.non_quantized if quantized_base else p.weight)
            buffers += max(live, head) + ds["stage3_prefetch_bucket_size"] * p.weight
    else:
        largest = max(counts.embedding, counts.lm_head, *(i * o for i, o in dims)) if full \
            else cfg.lora.r * max(i + o for i, o in dims)
        step_temp = optimizer_step_temporary(cfg.train.optim, hw, trainable, largest) * state_dtype / share
    if strategy == "fsdp":  # unsharded: two layers (current + prefetched, bf16), the root module (embeddings and
        # output layer, the whole step) and, for full fine-tuning, one layer's gradients before their reduce-scatter
        layer = counts.per_layer * (quantised / counts.linear if quantised else 2)
        root = (counts.embedding + counts.lm_head) * (p.non_quantized if quantized_base else 2)
        buffers = 2 * layer + root + (counts.per_layer * 2 if full else 0)
    if strategy == "zero3_offload":  # weights, fp32 master weights, states and fp32 gradients live in CPU RAM
        cpu_per_node = (weights + adapters + trainable * (4 + state_per + 4)) / hw.nodes
        weights = adapters = master = states = grads = step_temp = 0.0
    if quantized_base:  # the largest 4-bit weight, dequantised for its matmul
        buffers += max(shape.intermediate, shape.q_dim) * shape.hidden * p.act

    attention = planned_attention(cfg, hw.device)
    act = activation_bytes(shape, cfg, p, micro_batch, checkpointing, a, attention)
    activations = act["layers"] + act["other"] + act["loss"]
    one_layer = sum(layer_activation_bytes(shape, cfg, p, micro_batch, recompute=not checkpointing,
                                           attention=attention).values()) * micro_batch * cfg.data.max_length
    parts: Dict[str, float] = {
        "weights" if full else ("base weights (4-bit)" if quantised else "base weights"): weights,
        "LoRA adapters": adapters,
        "gradients": grads,
        "optimizer states" + (" (paged)" if paged else ""): states,
        "fp32 master weights": master,
        "gathered weights, buckets": buffers,
        "activations": act["layers"] + act["other"],
        "logits and loss": act["loss"],
        "optimizer step temporaries": step_temp,
    }
    if full:
        del parts["LoRA adapters"]
    static = weights + adapters + master + (0.0 if paged else states) + buffers
    if grad_accum > 1:  # the gradients of earlier micro-batches stay while the next one runs
        forward_backward = grads + activations
    else:  # backward frees the activations as it fills the gradients
        forward_backward = max(activations, grads + one_layer)
    peak = static + max(forward_backward, grads + step_temp)
    if quantized_base and strategy in ("zero3", "fsdp"):  # transformers quantises the whole base onto every
        loading = quantised + counts.non_quantized * p.weight  # GPU first; DeepSpeed / FSDP shard it afterwards
        parts["loading: whole 4-bit base"] = loading
        peak = max(peak, loading)
    if hw.device == "cuda":
        parts["CUDA context, workspaces"] = a.cuda_context_gib * GIB
        parts["allocator fragmentation"] = a.fragmentation * peak
        total = peak * (1 + a.fragmentation) + a.cuda_context_gib * GIB
    else:
        parts["framework objects"] = a.cpu_overhead_mib * MIB
        total = peak + a.cpu_overhead_mib * MIB
    why = unsupported(strategy, cfg, hw)
    return Estimate(strategy=strategy, micro_batch=micro_batch, checkpointing=checkpointing, parts=parts, peak=peak,
                    total=total, limit=hw.gpu_mem_gib * GIB, cpu_per_node=cpu_per_node, supported=not why, note=why)


# ----------------------------------------------------------------------------------------------------------------------
# Throughput
# ----------------------------------------------------------------------------------------------------------------------


def flops_per_token(shape: ModelShape, cfg, checkpointing: bool, a: Assumptions = Assumptions(),
                    attention: str = "varlen_packed") -> float:
    """Training FLOPs per token: matmul parameters N (decoder linears + output layer at label positions) x 6 for
    full fine-tuning, x 4 for a frozen base (no weight gradients) + 6 x LoRA parameters; +2N when checkpointing
    recomputes the forward. Causal attention: 2 x seq x q_dim per layer forward, x3 for training, x4 with
    checkpointing; twice that for an `attention` that computes whole rows under a mask (eager, or SDPA with a mask),
    which does not skip the causal half."""
    from train.kernels.attention import per_sample

    counts = shape.parameters()
    n = counts.linear + a.label_fraction * shape.vocab * shape.hidden
    causal_kernel = per_sample(attention) or (attention == "sdpa" and not cfg.data.packing)
    attention = (2 if causal_kernel else 4) * cfg.data.max_length * shape.q_dim * shape.layers
    method = method_of(cfg)
    matmul = method.matmul_flops * n  # 6N when the weights train, 4N for a frozen base: no weight gradients
    if method.adapter:
        matmul += 6 * lora_parameters(shape, cfg.lora.r, cfg.lora.target_modules)
    if checkpointing:
        matmul += 2 * n
    return matmul + attention * (4 if checkpointing else 3)


# ----------------------------------------------------------------------------------------------------------------------
# Recommendation
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Choice:
    estimate: Estimate
    grad_accum: int
    global_batch: int

    @property
    def overrides(self) -> List[str]:
        e = self.estimate
        return [f"train.per_device_batch_size={e.micro_batch}", f"train.gradient_accumulation_steps={self.grad_accum}",
                f"train.gradient_checkpointing={'true' if e.checkpointing else 'false'}"]


@dataclass
class Plan:
    shape: ModelShape
    method: str
    hardware: Hardware
    assumptions: Assumptions
    seq_len: int
    global_batch: int
    trainable: int
    table: Dict[str, Tuple[Estimate, Estimate]]  # strategy -> (without, with checkpointing) at the shown micro-batch
    shown_micro_batch: int
    recommended: Optional[Choice]
    requested: Optional[Choice] = None  # the recipe's own setting under a given strategy (train/sft.py's check)
    nearest: Optional[Tuple[str, Choice]] = None  # what to change when the requested setting does not fit
    min_gpus: Optional[int] = None  # the fewest GPUs of this size on which something fits, when nothing does now
    step_seconds: float = 0.0
    tokens_per_second: float = 0.0
    flops_per_token: float = 0.0
    notes: List[str] = field(default_factory=list)
    mfu_source: str = ""  # where the MFU of the speed line comes from (configs/mfu.json: assumed or measured)
    attention: str = ""  # the attention implementation the run uses (train/kernels/attention.py)
    dtype: str = "bfloat16"  # model.dtype


def _divisors(n: int, cap: int = 64) -> List[int]:
    return [d for d in range(min(n, cap), 0, -1) if n % d == 0]


def best_setting(shape, cfg, hw, strategy, per_gpu: int, a: Assumptions) -> Optional[Estimate]:
    """The fastest setting of a strategy that fits: no checkpointing with the largest micro-batch dividing the
    per-GPU share of the global batch, else checkpointing with the largest one; None if not even micro-batch 1 with
    checkpointing fits."""
    for checkpointing in (False, True):
        for b in _divisors(per_gpu):
            e = estimate(shape, cfg, hw, strategy, b, checkpointing, per_gpu // b, a)
            if e.fits:
                return e
    return None


def recommend(shape, cfg, hw, global_batch: int, a: Assumptions = Assumptions(),
              strategies=PREFERENCE) -> Optional[Choice]:
    """The first strategy in `strategies` (least communication first: DDP, ZeRO-2, ZeRO-3, FSDP, ZeRO-3 offload) that
    fits, with its fastest setting."""
    per_gpu = global_batch // hw.world
    for strategy in strategies:
        e = best_setting(shape, cfg, hw, strategy, per_gpu, a)
        if e is not None:
            return Choice(e, per_gpu // e.micro_batch, global_batch)
    return None


def minimum_gpus(shape, cfg, hw: Hardware, a: Assumptions, limit: int = 4096) -> Optional[int]:
    """The fewest GPUs of this size (8 per node beyond one node) on which some strategy fits micro-batch 1; None if
    not even `limit` do. More GPUs never need more memory per GPU, so the counts are bisected."""
    counts = [n for n in range(hw.world + 1, 9)] + [n for n in range(16, limit + 1, 8) if n > hw.world]

    def fits(n: int) -> bool:
        trial = replace(hw, nodes=max(1, n // 8), gpus_per_node=min(n, 8)) if n > 8 else \
            replace(hw, nodes=1, gpus_per_node=n)
        return recommend(shape, cfg, trial, trial.world, a, PREFERENCE) is not None

    if not counts or not fits(counts[-1]):
        return None
    lo, hi = 0, len(counts) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(counts[mid]) else (mid + 1, hi)
    return counts[lo]


def nearest_fit(shape, cfg, hw, strategy: str, requested: Estimate, global_batch: int,
                a: Assumptions) -> Optional[Tuple[str, Choice]]:
    """What to change, least first, when the requested setting does not fit: a smaller micro-batch (same global batch),
    then gradient checkpointing, then another strategy; None if none helps (Plan.min_gpus says how many GPUs would)."""
    per_gpu = global_batch // hw.world
    b = requested.micro_batch
    for checkpointing in dict.fromkeys((requested.checkpointing, True)):
        for micro in [d for d in _divisors(per_gpu) if d <= b]:
            e = estimate(shape, cfg, hw, strategy, micro, checkpointing, per_gpu // micro, a)
            if e.fits:
                change = [f"micro-batch {micro} with gradient accumulation {per_gpu // micro}"] if micro != b else []
                if checkpointing and not requested.checkpointing:
                    change.append("enable gradient checkpointing")
                return " and ".join(change), Choice(e, per_gpu // micro, global_batch)
    for other in PREFERENCE:
        if other == strategy:
            continue
        e = best_setting(shape, cfg, hw, other, per_gpu, a)
        if e is not None:
            return f"use {ACCELERATE_NAME.get(other, other)}", Choice(e, per_gpu // e.micro_batch, global_batch)
    return None


def make_plan(shape: ModelShape, cfg, hw: Hardware, a: Assumptions = Assumptions(),
              global_batch: Optional[int] = None, micro_batch: Optional[int] = None,
              requested_strategy: Optional[str] = None) -> Plan:
    """The whole plan: the breakdown for every strategy at the shown micro-batch, the recommendation, the recipe's own
    setting (when `requested_strategy` is given) and, if it does not fit, the nearest setting that does."""
    n = hw.world
    if a.mfu is None:
        mfu, mfu_source = model_flop_utilisation(cfg.method, hw.key)
        a = replace(a, mfu=mfu)
    else:
        mfu_source = "given (--mfu)"
    if global_batch is None:
        global_batch = cfg.train.per_device_batch_size * cfg.train.gradient_accumulation_steps * n
    if global_batch % n:
        raise PlanError(f"global batch {global_batch} is not a multiple of the {n} GPUs; choose e.g. "
                        f"{math.ceil(global_batch / n) * n}")
    per_gpu = global_batch // n
    recommended = recommend(shape, cfg, hw, global_batch, a, PREFERENCE)
    shown = micro_batch or (recommended.estimate.micro_batch if recommended else 1)
    table = {s: (estimate(shape, cfg, hw, s, shown, False, max(1, per_gpu // shown), a),
                 estimate(shape, cfg, hw, s, shown, True, max(1, per_gpu // shown), a)) for s in STRATEGIES}
    plan = Plan(shape=shape, method=cfg.method, hardware=hw, assumptions=a, seq_len=cfg.data.max_length,
                global_batch=global_batch, trainable=trainable_parameters(shape, cfg), table=table,
                shown_micro_batch=shown, recommended=recommended, mfu_source=mfu_source,
                attention=planned_attention(cfg, hw.device), dtype=cfg.model.dtype)
    if requested_strategy is not None:
        b = micro_batch or cfg.train.per_device_batch_size
        e = estimate(shape, cfg, hw, requested_strategy, b, cfg.train.gradient_checkpointing, max(1, per_gpu // b), a)
        plan.requested = Choice(e, max(1, per_gpu // b), global_batch)
        if not e.fits:
            plan.nearest = nearest_fit(shape, cfg, hw, requested_strategy, e, global_batch, a)
    stuck = recommended is None or (plan.requested and not plan.requested.estimate.fits and plan.nearest is None)
    if stuck and hw.device == "cuda":
        plan.min_gpus = minimum_gpus(shape, cfg, hw, a)
    chosen = recommended or plan.requested
    if chosen is not None and hw.device == "cuda" and not hw.tflops:
        plan.notes.append("speed not estimated: the GPU's peak TFLOP/s is unknown (--gpu-mem without --gpu names no "
                          "card); add --gpu NAME (a100, h100, l40s, ...) or --gpu-tflops T")
    elif chosen is not None and hw.device == "cuda":
        ckpt = chosen.estimate.checkpointing
        plan.flops_per_token = flops_per_token(shape, cfg, ckpt, a, plan.attention)
        tokens = global_batch * cfg.data.max_length
        plan.step_seconds = plan.flops_per_token * tokens / (n * hw.tflops * 1e12 * a.mfu)
        plan.tokens_per_second = tokens / plan.step_seconds
    if method_of(cfg).quantized_base:
        plan.notes.append("QLoRA under ZeRO-3 and FSDP loads the whole 4-bit base on every GPU before it is sharded "
                          "(counted as 'loading: whole 4-bit base')")
    if hw.device == "cuda" and hw.gpus_per_node > 1:
        loaded = (shape.exact_parameters or shape.parameters().total) * DTYPE_BYTES[cfg.model.dtype]
        plan.notes.append(f"FSDP: every rank of a node reads the whole model into CPU RAM before it is sharded "
                          f"(transformers 5.25 loads the weights on every rank even with "
                          f"fsdp_cpu_ram_efficient_loading): {format_gib(hw.gpus_per_node * loaded)} GiB of CPU RAM "
                          f"per node at load")
    return plan


# ----------------------------------------------------------------------------------------------------------------------
# Text and JSON
# ----------------------------------------------------------------------------------------------------------------------


def format_gib(x: float) -> str:
    return f"{x / GIB:.1f}" if x >= 0.05 * GIB or x == 0 else f"{x / GIB:.2f}"


def _billions(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def render(plan: Plan) -> str:
    """The plan as text: model, setup, the per-strategy table, the recipe's setting, the recommendation, assumptions."""
    s, hw = plan.shape, plan.hardware
    unit = "GPU" if hw.device == "cuda" else "CPU process"
    where = hw.gpu if hw.device == "cuda" else "CPU process(es)"
    counted = "counted on the meta device" if s.exact_parameters else f"{s.family}, from config.json"
    if s.origin:  # where shape_for found it: a hub config, a configs/models/ file, or only the size in the name
        counted = f"{'counted on the meta device' if s.exact_parameters else s.family}; shape from {s.origin}"
    lines = [
        f"model   {s.name}: {_billions(s.exact_parameters or s.parameters().total)} parameters ({counted})",
        f"        {s.layers} layers, hidden {s.hidden}, {s.heads} heads / {s.kv_heads} KV heads, MLP "
        f"{s.intermediate}, vocab {s.vocab}{', tied embeddings' if s.tied else ''}",
        f"method  {plan.method}: {_billions(plan.trainable)} trainable parameters",
        f"setup   {hw.nodes} node(s) x {hw.gpus_per_node} {where} ({hw.gpu_mem_gib:.1f} GiB each)",
        f"        sequence {plan.seq_len}, global batch {plan.global_batch} sequences "
        f"({plan.global_batch * plan.seq_len:,} tokens per optimizer step)",
        "",
        f"{f'GiB per {unit}, micro-batch {plan.shown_micro_batch}':34}" + "".join(f"{n:>14}" for n in STRATEGIES),
    ]
    def row_of(label: str, part: str, i: int = 0) -> str:
        estimates = [plan.table[n][i] for n in STRATEGIES]  # unsupported strategies: blank cells
        return f"{label:34}" + "".join(f"{format_gib(e.parts.get(part, 0.0)) if e.supported else '':>14}" for e in estimates)

    for part in dict.fromkeys(part for n in STRATEGIES for part in plan.table[n][0].parts):
        if part == "activations":
            lines.append(row_of("activations, no checkpointing", part, 0))
            lines.append(row_of("activations, checkpointing", part, 1))
        elif any(plan.table[n][0].parts.get(part, 0.0) for n in STRATEGIES):
            lines.append(row_of(part, part))
    for label, i in (("total, no checkpointing", 0), ("total, checkpointing", 1)):
        cells = [("n/a" if not e.supported else f"{format_gib(e.total)} {'ok' if e.fits else '--'}")
                 for e in (plan.table[n][i] for n in STRATEGIES)]
        lines.append(f"{label:34}" + "".join(f"{c:>14}" for c in cells))
    offload = plan.table["zero3_offload"][0].cpu_per_node if plan.table["zero3_offload"][0].supported else 0
    if offload:
        lines.append(f"{'CPU RAM per node (offloaded)':34}" + f"{'':>14}" * 3 + f"{format_gib(offload):>14}")
    why = "; ".join(f"{n}: {plan.table[n][0].note.split(':')[0]}" for n in STRATEGIES if plan.table[n][0].note)
    lines.append("ok: fits, --: does not" + (f", n/a: {why}" if why else ""))
    lines.append("")
    if plan.requested is not None:
        e = plan.requested.estimate
        verdict = "fits" if e.fits else f"DOES NOT FIT in {e.limit / GIB:.1f} GiB"
        lines.append(f"recipe       {strategy_label(e.strategy, hw)}, micro-batch {e.micro_batch}, gradient "
                     f"accumulation {plan.requested.grad_accum}, checkpointing {'on' if e.checkpointing else 'off'}"
                     f" -> {format_gib(e.total)} GiB per {unit}: {verdict}")
        if plan.nearest is not None:
            what, c = plan.nearest
            lines.append(f"nearest fit  {what} -> {format_gib(c.estimate.total)} GiB ({' '.join(c.overrides)})")
    if plan.recommended is not None:
        c, e = plan.recommended, plan.recommended.estimate
        lines.append(f"recommended  {strategy_label(e.strategy, hw)}, micro-batch {e.micro_batch}, gradient "
                     f"accumulation {c.grad_accum}, gradient checkpointing {'on' if e.checkpointing else 'off'} -> "
                     f"{format_gib(e.total)} of {e.limit / GIB:.1f} GiB per {unit}")
        lines.append(f"             {' '.join(c.overrides)}")
    elif plan.min_gpus:
        lines.append(f"nothing fits on {hw.world} x {hw.gpu_mem_gib:.1f} GiB: it needs at least {plan.min_gpus} such "
                     f"GPUs")
    else:
        loading = max((e.parts.get("loading: whole 4-bit base", 0.0) for pair in plan.table.values() for e in pair),
                      default=0.0)
        why = (f"QLoRA loads the whole 4-bit base ({format_gib(loading)} GiB) onto every GPU before any sharding"
               if loading > hw.gpu_mem_gib * GIB else
               "what each one holds whatever the sharding (activations, gathered weights) is too much")
        lines.append(f"nothing fits on any number of {hw.gpu_mem_gib:.1f} GiB {unit}s: {why}; use larger ones or "
                     f"shorter sequences")
    if plan.step_seconds:
        from train.kernels.attention import describe

        lines.append(f"speed        {plan.flops_per_token / 1e9:.1f} GFLOP per token -> {plan.step_seconds:.2f} s per "
                     f"optimizer step, {plan.tokens_per_second:,.0f} tokens/s ({hw.world} x {hw.tflops:g} TFLOP/s at "
                     f"{plan.assumptions.mfu:.0%} MFU)")
        lines.extend(textwrap.wrap(f"MFU {plan.mfu_source}; attention: {describe(plan.attention, hw.device, plan.dtype)}",
                                   116, initial_indent=" " * 13, subsequent_indent=" " * 13))
    for note in plan.notes:
        lines.extend(textwrap.wrap(note, 116, initial_indent="note         ", subsequent_indent=" " * 13))
    lines.append("")
    lines.append("assumptions")
    for line in plan.assumptions.lines():
        lines.extend(textwrap.wrap(line, 116, initial_indent="  - ", subsequent_indent="    "))
    return "\n".join(lines)


def strategy_label(strategy: str, hw: Hardware) -> str:
    """The configs/accelerate name a strategy runs with."""
    if strategy == "ddp":
        if hw.device == "cpu":
            return "cpu" if hw.world == 1 else "cpu_ddp"
        return "single_gpu" if hw.world == 1 else "multi_gpu"
    return ACCELERATE_NAME[strategy]


def to_json(plan: Plan) -> dict:
    def est(e: Estimate) -> dict:
        return {"strategy": e.strategy, "micro_batch": e.micro_batch, "checkpointing": e.checkpointing,
                "parts_gib": {k: round(v / GIB, 3) for k, v in e.parts.items()}, "peak_gib": round(e.peak / GIB, 3),
                "total_gib": round(e.total / GIB, 3), "limit_gib": round(e.limit / GIB, 3), "fits": e.fits,
                "supported": e.supported, "note": e.note, "cpu_per_node_gib": round(e.cpu_per_node / GIB, 3)}

    def choice(c: Optional[Choice]) -> Optional[dict]:
        return None if c is None else {**est(c.estimate), "gradient_accumulation": c.grad_accum,
                                       "accelerate": strategy_label(c.estimate.strategy, plan.hardware),
                                       "overrides": c.overrides}

    counts = plan.shape.parameters()
    return {
        "model": {**asdict(plan.shape), "parameters": plan.shape.exact_parameters or counts.total,
                  "trainable_parameters": plan.trainable},
        "method": plan.method, "hardware": asdict(plan.hardware), "assumptions": asdict(plan.assumptions),
        "seq_len": plan.seq_len, "global_batch": plan.global_batch, "micro_batch_shown": plan.shown_micro_batch,
        "strategies": {s: {"no_checkpointing": est(a), "checkpointing": est(b)} for s, (a, b) in plan.table.items()},
        "recommended": choice(plan.recommended), "requested": choice(plan.requested),
        "nearest": None if plan.nearest is None else {"change": plan.nearest[0], **choice(plan.nearest[1])},
        "min_gpus": plan.min_gpus, "flops_per_token": plan.flops_per_token, "step_seconds": plan.step_seconds,
        "tokens_per_second": plan.tokens_per_second, "notes": plan.notes, "mfu": plan.assumptions.mfu,
        "mfu_source": plan.mfu_source, "attention": plan.attention,
    }
