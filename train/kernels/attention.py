"""Which attention a run uses, decided in one place and without importing torch (the planner asks too).

Packed rows (data.packing: true) hold several samples per row whose `position_ids` restart at 0; they must never attend
to each other. With `model.attn_implementation: sdpa` (the default), transformers alone would build a dense L x L
block mask for every row: correct, but SDPA's flash kernel is then excluded and the cost is the full L^2, not the sum
of the samples' squares. So packed rows with sdpa train with an attention per sample instead:

| where | implementation | kernel |
| --- | --- | --- |
| CPU | "sdpa_packed" (train/kernels/packed_attention.py) | causal SDPA on each sample's block |
| GPU, `flash_attn` installed, 16-bit | "flash_attention_2" (transformers) | FlashAttention varlen, cu_seq_lens from the collator |
| GPU otherwise | "varlen_packed" (train/kernels/packed_attention.py) | PyTorch's varlen_attn (FlashAttention inside PyTorch) for 16-bit; else flex_attention with a document mask; else causal SDPA per sample |

Key/value heads stay unexpanded (GQA) in every one of them. Padded (unpacked) batches, eager, flex_attention and the
FlashAttention / hub-kernel implementations asked for by name stay as configured. FlashAttention asked for by name
must be installed: transformers would otherwise fetch a kernel from the hub silently (`check_available`).
"""

from __future__ import annotations

import importlib.util
from typing import Optional

PACKED_SDPA = "sdpa_packed"  # CPU: causal SDPA per sample block
PACKED_VARLEN = "varlen_packed"  # GPU: a variable-length kernel over the row's samples
FLASH = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}  # name -> its package
BUILT_IN = ("sdpa", "eager", "flex_attention", *FLASH)
SIXTEEN_BIT = ("bfloat16", "float16")


def is_hub_kernel(name: str) -> bool:
    """`kernels-community/flash-attn2` and the like: attention code fetched from the hub by the `kernels` package."""
    return "/" in name


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def choose_attention(requested: str, packing: bool, device_type: str, text_causal: bool = True,
                     dtype: str = "bfloat16", flash_installed: Optional[bool] = None) -> str:
    """The attention implementation a run trains with (see the module's table). `text_causal`: the model is a
    text-only causal LM (packed_attention.supports); `flash_installed` defaults to whether `flash_attn` imports."""
    if requested != "sdpa" or not packing or not text_causal:
        return requested
    if device_type != "cuda":
        return PACKED_SDPA
    if flash_installed is None:
        flash_installed = installed(FLASH["flash_attention_2"])
    return "flash_attention_2" if flash_installed and dtype in SIXTEEN_BIT else PACKED_VARLEN


def needs_varlen_kwargs(implementation: str) -> bool:
    """Whether the collator must pass cu_seq_lens_q/k and max_length_q/k: every FlashAttention-style kernel (ours,
    transformers' flash_attention_*, hub kernels) infers sample boundaries from position_ids only for a batch of one
    row, so with several rows per batch packed samples would attend to each other without them."""
    return implementation.startswith("flash") or is_hub_kernel(implementation) or implementation == PACKED_VARLEN


def varlen_kernel(device_type: str, dtype: str, dropout: float, torch_varlen: bool, flex: bool) -> str:
    """The kernel "varlen_packed" runs for one call: "torch_varlen" (16-bit on a GPU, no dropout), "flex" (a GPU
    without it, no dropout), else "sdpa_per_sample" (any device, dtype and dropout)."""
    if device_type == "cuda" and not dropout:
        if torch_varlen and dtype in SIXTEEN_BIT:
            return "torch_varlen"
        if flex:
            return "flex"
    return "sdpa_per_sample"


def describe(implementation: str, device_type: str, dtype: str) -> str:
    """A short description of what really runs, for the run's log and the planner's speed line."""
    if implementation == PACKED_SDPA:
        return "causal SDPA per sample (packed rows, CPU)"
    if implementation == PACKED_VARLEN:
        kernel = "PyTorch varlen_attn" if dtype in SIXTEEN_BIT else "flex_attention, document mask"
        return f"{kernel} per sample (packed rows)"
    if implementation.startswith("flash"):
        return f"{implementation} varlen (packed rows)" if device_type == "cuda" else implementation
    if implementation == "sdpa" and device_type == "cuda":
        return "SDPA"
    return implementation


def per_sample(implementation: str) -> bool:
    """Whether packed rows are attended per sample (cost: the samples' squares, key/value heads unexpanded), as
    opposed to one masked attention over the whole row (sdpa, eager: L^2, keys and values expanded, a mask)."""
    return implementation in (PACKED_SDPA, PACKED_VARLEN) or implementation.startswith("flash") \
        or is_hub_kernel(implementation)


def check_available(requested: str, cuda: bool) -> Optional[str]:
    """Why `model.attn_implementation` cannot run on this machine, or None. Called before any data is prepared or
    weights are loaded (train/sft.py, launch eval)."""
    if requested in FLASH:
        if not cuda:
            return (f"model.attn_implementation={requested} needs a CUDA GPU and this machine has none. Use "
                    f"model.attn_implementation=sdpa (packed rows then attend per sample on the CPU)")
        package = FLASH[requested]
        if not installed(package):
            pip = "flash-attn" if requested == "flash_attention_2" else "flash-attn-3 (built from the hopper/ folder)"
            return (f"model.attn_implementation={requested} needs the '{package}' package, which is not installed "
                    f"(transformers would otherwise download kernel code from the hub). Install {pip} "
                    f"(pip install flash-attn --no-build-isolation), or set model.attn_implementation=sdpa: on a GPU, "
                    f"packed rows then use PyTorch's own variable-length attention, no extra package needed")
        return None
    if is_hub_kernel(requested):
        if not installed("kernels"):
            return (f"model.attn_implementation={requested} is a hub kernel and needs the 'kernels' package "
                    f"(pip install kernels) and hub access; or set model.attn_implementation=sdpa")
        return None
    if requested not in BUILT_IN:
        return (f"model.attn_implementation={requested}: not one of {', '.join(BUILT_IN)} or a hub kernel "
                f"(org/name)")
    return None
