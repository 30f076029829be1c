"""Training on a CPU: the heap's free pages go back to the system before the input embeddings' gradient is allocated.

PyTorch takes CPU memory from glibc's malloc, which keeps freed blocks under 32 MiB in its heap. By the time the
backward pass reaches the input embeddings, every activation has been freed, and the heap holds those pages as free
space; the embeddings' gradient (vocabulary x hidden, dense: 148 MiB for the Qwen3 vocabulary at hidden 256) is then
allocated on top of them, at the step's peak. `trim_before_embedding_backward` gives those free pages back
(`malloc_trim`) just before: on bench/train_throughput.py's workload A (full fine-tuning, BENCHMARKS.md) the peak RSS
fell from 2,188 MiB to 2,038 (with the loss holding one chunk of logits at a time, measured together) at the same
tokens/s; the next forward pass faults those pages in again. Only when the embeddings train (full fine-tuning, or a
LoRA recipe that saves them); not on a GPU (train/trainer.py) or without glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import torch


def _glibc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]  # glibc only (musl has no malloc_trim)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def _trim(grad: torch.Tensor) -> None:
    _LIBC.malloc_trim(0)  # returns None: the gradient passes on unchanged


def _on_embedding_output(module, args, output) -> None:
    if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad \
            and output.device.type == "cpu":
        output.register_hook(_trim)


def trim_before_embedding_backward(model: torch.nn.Module) -> bool:
    """Hook the model's input embeddings (their output's gradient arrives just before their backward). Returns
    whether it did: glibc present and the embeddings have a trainable parameter."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if _LIBC is None or embeddings is None or not any(p.requires_grad for p in embeddings.parameters()) \
            or hasattr(embeddings, "_trim_hook"):
        return False
    embeddings._trim_hook = embeddings.register_forward_hook(_on_embedding_output)
    return True
