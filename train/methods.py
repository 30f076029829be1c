"""The fine-tuning methods, one entry each: everything else (config validation, model loading, the planner, the launcher,
the model card, evaluation) asks this table instead of comparing `cfg.method` with a string.

To add a method: one `Method` entry in METHODS, and its tests (tests/test_methods.py shows what one entry reaches: the
recipe's validation, the model's adapters, the planner's memory, FLOPs and MFU, the model card).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional


@dataclass(frozen=True)
class Method:
    name: str  # the value of `method:` in a recipe
    title: str  # how the model card names it
    adapter: bool  # trains LoRA adapters on a frozen base (saved as adapter_model.safetensors), else all weights
    quantized_base: bool = False  # the frozen base is loaded in 4 bits (bitsandbytes, qlora.* settings)
    lora_options: Dict[str, object] = field(default_factory=dict)  # extra peft LoraConfig arguments (e.g. use_dora)
    lighter: Optional[str] = None  # the method to suggest when this one does not fit
    # the planner's assumed model FLOP utilisation until scripts/gpu_check.sh has measured one (configs/mfu.json):
    # HF Trainer + PEFT in eager bf16 rarely reaches 40%, and QLoRA spends time dequantising
    mfu: float = 0.25

    @property
    def trains_base(self) -> bool:
        """Every weight of the base model trains (its gradients and optimizer states exist)."""
        return not self.adapter

    @property
    def mergeable(self) -> bool:
        """The trained adapter can be merged into the base (save.merged)."""
        return self.adapter

    @property
    def library(self) -> str:
        """What loads the saved result: peft (an adapter) or transformers (full weights)."""
        return "peft" if self.adapter else "transformers"

    @property
    def matmul_flops(self) -> int:
        """Training FLOPs per parameter in a matrix multiplication and token: forward 2, input gradient 2, weight
        gradient 2 (none for a frozen weight)."""
        return 6 if self.trains_base else 4


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("full", "full fine-tuning", adapter=False, lighter="lora", mfu=0.35),
    Method("lora", "LoRA", adapter=True, lighter="qlora", mfu=0.25),
    Method("qlora", "QLoRA (4-bit base + LoRA)", adapter=True, quantized_base=True, mfu=0.15),
)}
NAMES = tuple(METHODS)


def method_of(cfg) -> Method:
    """The Method of a Config (config validation guarantees the name is known)."""
    return METHODS[cfg.method]
