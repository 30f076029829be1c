"""Quiet output (train/quiet.py): each known irrelevant warning of a dependency really appears without the filter and
not with it, `--verbose` keeps everything, and nothing else those libraries say is lost."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from train.quiet import KNOWN_LOG_MESSAGES, quiet

REPO = Path(__file__).resolve().parent.parent

# Each dependency import (or call) that prints one of the known messages on this kind of machine.
TRIGGERS = {
    "bitsandbytes": "import bitsandbytes",
    "deepspeed": "import deepspeed",
    "future": ("from transformers import LlamaConfig, LlamaForCausalLM\n"
               "m = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, "
               "num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))\n"
               "m.is_gradient_checkpointing"),  # transformers 5: FutureWarning, the Trainer reads it every run
}
MESSAGES = {
    "bitsandbytes": ["Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
                     "Failed to load CPU gemm_4bit_forward from kernels-community"],
    "deepspeed": ["Setting accelerator to CPU."],
    "future": ["FutureWarning: `is_gradient_checkpointing` is deprecated"],
}


def run(code: str, verbose: str = "", quiet_first: bool = True) -> str:
    """stdout + stderr of `code` in a fresh interpreter (the libraries print when first imported)."""
    prelude = f"from train.quiet import quiet\nquiet({verbose == 'arg'})\n" if quiet_first else ""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": ""}
    env.pop("SFT_VERBOSE", None)
    if verbose == "env":
        env["SFT_VERBOSE"] = "1"
    done = subprocess.run([sys.executable, "-c", prelude + code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.mark.parametrize("what", ["bitsandbytes", "deepspeed", "future"])
def test_each_known_warning_appears_without_the_filter_and_not_with_it(what):
    bare = run(TRIGGERS[what], quiet_first=False)
    if what == "bitsandbytes" and MESSAGES[what][1] not in bare:
        pytest.skip("bitsandbytes looks up its hub kernel only on a CPU with AVX512-BF16; this one has none")
    for message in MESSAGES[what]:
        assert message in bare, f"the dependency no longer prints {message!r}: update train/quiet.py"
    filtered = run(TRIGGERS[what])
    for message in MESSAGES[what]:
        assert message not in filtered
    for verbose in ("arg", "env"):  # --verbose, or SFT_VERBOSE=1 inherited from the launching command
        shown = run(TRIGGERS[what], verbose=verbose)
        assert all(message in shown for message in MESSAGES[what])


def test_other_messages_of_the_same_loggers_and_our_own_warnings_still_show(caplog):
    quiet()
    for name, _ in KNOWN_LOG_MESSAGES:
        logger = logging.getLogger(name)
        with caplog.at_level(logging.WARNING, logger=name):
            logger.propagate, was = True, logger.propagate  # DeepSpeed's logger does not propagate
            try:
                logger.warning("something else went wrong")
            finally:
                logger.propagate = was
        assert "something else went wrong" in caplog.text
        caplog.clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        quiet()
        warnings.warn("ours", FutureWarning)  # attributed to this test module, not to a library
    assert [str(w.message) for w in seen] == ["ours"]


def test_the_commands_take_verbose(capsys):
    from launch.__main__ import main

    for command in ("prepare", "inspect", "eval", "run", "slurm", "plan"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0 and "--verbose" in capsys.readouterr().out
    from train.sft import parse_args

    assert parse_args(["--config", "r.yaml", "train.max_steps=1", "--verbose"]).verbose
