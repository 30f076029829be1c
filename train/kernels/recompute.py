"""Activations the backward pass recomputes from tensors autograd keeps anyway, instead of keeping them too.

Two kinds of tensors in a decoder layer are one cheap step away from tensors that are saved regardless:
- the gated MLP (Llama, Qwen2/3, Mistral, Gemma, EXAONE 4), `down(act(gate(x)) * up(x))`: plain autograd keeps four
  tensors of the intermediate width per token, `gate` (for act'), `act(gate)` and `up` (for the product's gradient)
  and the product (the input of `down_proj`, for its weight's or lora_A's gradient). `ActTimesUp` keeps gate and up
  and recomputes act(gate) in its backward; the product is registered for recomputation;
- an RMSNorm's output (the input of q/k/v and gate/up, kept for their weights' or lora_A's gradients) is its
  forward applied to its input, which the norm keeps for its own backward (fp32 inputs; other dtypes are left alone).
On SmolLM2-135M with LoRA on all linear layers that is 3 of the 10 hidden-or-wider tensors a layer keeps per token.

`recomputing()` wraps the forward pass (train/trainer.py does it in training): while it is active, a saved-tensor
hook stores a note in place of any registered tensor (or view of it) that autograd saves, and the backward pass
recomputes it when it asks for it. The recomputation runs the same operations on the same values, so loss and
gradients are bit-identical to the plain model (tests/test_recompute.py). A tensor changed in place after it was
registered is kept as usual, and the registry holds only weak references, so a freed tensor's address can never be
taken for it. Not used with gradient checkpointing (a layer then keeps nothing of these anyway, and the checkpoint's
own hooks must see every tensor). An MLP is changed only if its class's forward is, in its source, exactly the gated
form above; a norm, if its class name ends in "RMSNorm" (it gets a forward hook); the classes are never touched.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from typing import Callable, Dict, Optional, Tuple

import torch

from train.kernels.instance_forward import bind_forward, has_own_forward

GATED_FORWARD = "defforward(self,x):down_proj=self.down_proj(self.act_fn(self.gate_proj(x))*self.up_proj(x))returndown_proj"

# storage address -> (weak reference to the registered tensor, its version, recompute(*inputs), inputs)
_registry: Optional[Dict[int, Tuple[weakref.ref, int, Callable, tuple]]] = None


class ActTimesUp(torch.autograd.Function):
    """act(gate) * up, saving gate and up only; act(gate) is recomputed in backward."""

    @staticmethod
    def forward(ctx, gate, up, act):
        ctx.act = act
        ctx.save_for_backward(gate, up)
        return act(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        with torch.enable_grad():
            g = gate.detach().requires_grad_(True)
            activated = ctx.act(g)
        grad_up = grad * activated if ctx.needs_input_grad[1] else None
        grad_gate = torch.autograd.grad(activated, g, grad * up)[0] if ctx.needs_input_grad[0] else None
        return grad_gate, grad_up, None


def register(output: torch.Tensor, recompute: Callable, *inputs: torch.Tensor) -> None:
    """While `recomputing()` is active: if autograd saves `output` (or a view of it), keep a note instead and call
    `recompute(*inputs)` in the backward pass. `inputs` must be tensors autograd keeps anyway; they are held
    detached."""
    if _registry is None or type(output) is not torch.Tensor or output.storage_offset() != 0 \
            or not output.is_contiguous() \
            or output.untyped_storage().nbytes() != output.numel() * output.element_size():
        return  # only a tensor that is its whole storage: the notes recreate views of it by their geometry
    key = output.untyped_storage().data_ptr()
    _registry[key] = (weakref.ref(output, lambda _: _registry is not None and _registry.pop(key, None)),
                      output._version, recompute, tuple(t.detach() for t in inputs))


class _Note:
    """What the hook stores in place of a registered tensor: how to recompute it, and the saved view's geometry."""

    __slots__ = ("recompute", "inputs", "size", "stride", "offset")

    def __init__(self, recompute, inputs, t: torch.Tensor):
        self.recompute, self.inputs = recompute, inputs
        self.size, self.stride, self.offset = t.size(), t.stride(), t.storage_offset()


def _pack(t):
    if _registry is None or type(t) is not torch.Tensor:
        return t
    entry = _registry.get(t.untyped_storage().data_ptr())
    if entry is None:
        return t
    ref, version, recompute, inputs = entry
    original = ref()
    if original is None or original._version != version or t._version != version:
        return t  # gone, or changed in place since it was registered: keep it as autograd would
    return _Note(recompute, inputs, t)


def _unpack(p):
    if isinstance(p, _Note):
        with torch.no_grad():
            full = p.recompute(*p.inputs)
        return full.as_strided(p.size, p.stride, p.offset)
    return p


@contextlib.contextmanager
def recomputing(enabled: bool = True):
    """Around a forward pass: registered tensors that autograd saves become notes, recomputed in backward."""
    global _registry
    if not enabled or _registry is not None:
        yield
        return
    _registry = {}
    try:
        with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
            yield
    finally:
        _registry = None


# ---------------------------------------------------------------------------------------------------------------------
# The modules that register what they produce
# ---------------------------------------------------------------------------------------------------------------------


def gated_mlp_forward(self, x):
    gate, up = self.gate_proj(x), self.up_proj(x)
    if not torch.is_grad_enabled() or not (gate.requires_grad or up.requires_grad):
        return self.down_proj(self.act_fn(gate) * up)  # inference or a frozen MLP: nothing is saved anyway
    act = self.act_fn
    product = ActTimesUp.apply(gate, up, act)
    register(product, lambda g, u: act(g) * u, gate, up)  # gate and up: what ActTimesUp keeps
    return self.down_proj(product)


def register_norm_output(module, args, out):
    """Forward hook of an RMSNorm (a hook, not a new forward: transformers rebinds the forward of its norms on
    `model.train()`). The recomputation calls the module's forward as it is, without hooks."""
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.dtype == torch.float32 and torch.is_grad_enabled():
        # even if `out` needs no gradient, a LoRA layer that reads it keeps it; x: what the norm keeps for its
        # backward (or, with a frozen embedding before it, what the note alone holds, in place of `out`)
        register(out, module.forward, x)


def _is_gated_mlp(module: torch.nn.Module) -> bool:
    if not all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return False
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return False
    return "".join(source.split()) == GATED_FORWARD  # whitespace aside, the whole method


def recompute_activations(model: torch.nn.Module) -> Dict[str, int]:
    """Give gated MLPs the forward above (an instance attribute; the class is untouched) and RMSNorms the hook above.
    Call it before wrapping in LoRA: the MLP's forward looks its projections up at call time. Returns how many of
    each changed."""
    changed = {"gated_mlp": 0, "rms_norm": 0}
    for module in model.modules():
        if has_own_forward(module):  # ours already, or another wrapper's (transformers binds some classes' own
            continue  # forward to their instances: those are plain)
        if _is_gated_mlp(module):
            bind_forward(module, gated_mlp_forward)
            changed["gated_mlp"] += 1
        elif type(module).__name__.endswith("RMSNorm") and not hasattr(module, "_recompute_hook"):
            module._recompute_hook = module.register_forward_hook(register_norm_output)
            changed["rms_norm"] += 1
    return changed
