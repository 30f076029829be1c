"""LoRA's update added in place: peft's LoRA Linear forward for its common case, without two output-sized temporaries
per layer and call. Installed on each LoRA layer instance by `lean_lora_layers` (train/model.py calls it)."""

from __future__ import annotations

import torch

from train.kernels.instance_forward import bind_forward


def lean_lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft's LoRA Linear forward for its common case (one active unmerged plain adapter), with the adapter's update
    scaled and added in place: peft computes `result + lora_B(lora_A(dropout(x))) * scaling` out of place, two more
    output-sized tensors per layer and call. Same operations in the same order, so the same bits
    (tests/test_recompute.py). Anything else (several or disabled adapters, DoRA and other variants, extra arguments)
    takes peft's own forward."""
    active = self.active_adapters
    if args or kwargs or self.disable_adapters or self.merged or len(active) != 1 or active[0] not in self.lora_A \
            or active[0] in self.lora_variant:
        return type(self).forward(self, x, *args, **kwargs)
    name = active[0]
    result = self.base_layer(x)  # a frozen Linear keeps its input, not its output: the output may change in place
    lora_A = self.lora_A[name]
    update = self.lora_B[name](lora_A(self.lora_dropout[name](self._cast_input_dtype(x, lora_A.weight.dtype))))
    if update.dtype != result.dtype:  # as peft: promoted sum, back to the base layer's dtype
        return (result + update * self.scaling[name]).to(result.dtype)
    return result.add_(update.mul_(self.scaling[name]))


def lean_lora_layers(model: torch.nn.Module) -> int:
    """Give peft's LoRA Linear layers (plain torch.nn.Linear bases) `lean_lora_forward`; returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    changed = 0
    for module in model.modules():
        if type(module) is LoraLinear and type(module.base_layer) is torch.nn.Linear and "forward" not in vars(module):
            bind_forward(module, lean_lora_forward)
            changed += 1
    return changed
