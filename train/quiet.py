"""Known irrelevant warnings from dependencies, filtered out of our commands (`--verbose` shows everything).

Each entry below was seen in this project's own output and says nothing a user can act on:

- bitsandbytes 0.50 on a CPU with AVX512-BF16 looks up a hub kernel (`kernels-community/quantization-bitsandbytes`)
  when it is imported, by every process, QLoRA or not: "Skipping publisher trust check ... offline mode" (the
  `kernels` package) and "Failed to load CPU gemm_4bit_forward from kernels-community ..." (bitsandbytes; it then
  uses its own CPU kernel, the one this project's tests measure).
- DeepSpeed 0.19 on a machine without CUDA: "Setting accelerator to CPU. If you have GPU or other accelerator, we
  were unable to detect it." (every CPU process; a GPU run never prints it, and a GPU run that should have found one
  fails loudly anyway).
- FutureWarning and DeprecationWarning raised inside the libraries we call (transformers' "`is_gradient_checkpointing`
  is deprecated ... Use `is_activation_checkpointing`", which the Trainer itself triggers): a note to the library's
  own callers, not to the user. Warnings raised by this project's code are kept.

Messages are dropped by a logging filter on the logger that emits them (matched by the start of the message, so
anything else those loggers say still shows) and by `warnings` filters limited to the libraries' modules.
`quiet(verbose=True)` or SFT_VERBOSE=1 (inherited by the processes a command starts) keeps everything.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Tuple

VERBOSE_ENV = "SFT_VERBOSE"

# (logger name, start of the message): the exact loggers that emit them.
KNOWN_LOG_MESSAGES: Tuple[Tuple[str, str], ...] = (
    ("kernels._internals.hf_hub", "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'"),
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    ("DeepSpeed", "Setting accelerator to CPU."),
)

# Library modules whose FutureWarning / DeprecationWarning are notes to their own callers (regex on the module name).
LIBRARIES = r"(transformers|peft|accelerate|deepspeed|torch|datasets|bitsandbytes|huggingface_hub|kernels|wandb)(\.|$)"


class _DropKnown(logging.Filter):
    """Drops records whose message starts with one of `starts`; lets every other record through."""

    def __init__(self, starts: Tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is not ours to judge
            return True
        return not message.startswith(self.starts)


def is_verbose(flag: bool = False) -> bool:
    return flag or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet(verbose: bool = False) -> bool:
    """Install the filters (once per process; call it before the libraries are imported). With `verbose` (or
    SFT_VERBOSE=1) nothing is filtered, and SFT_VERBOSE=1 is set so processes started from here show everything too.
    Returns whether output is verbose."""
    if is_verbose(verbose):
        os.environ[VERBOSE_ENV] = "1"
        return True
    by_logger = {}
    for name, start in KNOWN_LOG_MESSAGES:
        by_logger.setdefault(name, []).append(start)
    for name, starts in by_logger.items():
        logger = logging.getLogger(name)  # the same object the library gets when it asks for this name later
        if not any(isinstance(f, _DropKnown) for f in logger.filters):
            logger.addFilter(_DropKnown(tuple(starts)))
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARIES)
    return False
