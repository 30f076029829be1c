"""The fine-tuning methods are one table (train/methods.py): a new method is one entry, and everything that depends on
the method (the recipe's validation, the model's adapters, the planner, the launcher, the model card) follows it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from train.methods import METHODS, Method, method_of

REPO = Path(__file__).resolve().parent.parent


def test_the_shipped_methods():
    full, lora, qlora = METHODS["full"], METHODS["lora"], METHODS["qlora"]
    assert (full.trains_base, full.adapter, full.mergeable, full.library, full.matmul_flops) == \
        (True, False, False, "transformers", 6)
    assert (lora.trains_base, lora.adapter, lora.mergeable, lora.library, lora.matmul_flops) == \
        (False, True, True, "peft", 4)
    assert qlora.quantized_base and qlora.adapter and not lora.quantized_base and not full.quantized_base
    assert full.lighter == "lora" and lora.lighter == "qlora" and qlora.lighter is None
    assert all(m.lighter is None or m.lighter in METHODS for m in METHODS.values())


def test_nothing_outside_the_table_compares_the_method_with_a_name():
    """Every decision that depends on the method asks train/methods.py (`method_of(cfg).adapter`, ...)."""
    offenders = []
    for folder in ("train", "launch", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if re.search(r"""method\s*(==|!=|in)\s*[("']+(full|lora|qlora)""", line):
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == []


@pytest.mark.slow
def test_a_new_method_is_one_entry(tmp_path, monkeypatch):
    """DoRA (peft's weight-decomposed LoRA) added as one entry: the recipe validates, the model gets DoRA adapters, the
    planner prices it with its own MFU, and a real run trains and writes a card that names it."""
    from launch.assets import tiny_model_dir
    from tests.tiny_model import write_tiny_recipe
    from train.config import ConfigError, load_config
    from train.plan import planner as P
    from train.plan import shape as S
    from train.sft import train_sft

    recipe = write_tiny_recipe(tmp_path, tiny_model_dir(tmp_path / "model"))
    with pytest.raises(ConfigError, match="'dora' is not one of full, lora, qlora"):
        load_config(recipe, ["method=dora"])
    monkeypatch.setitem(METHODS, "dora", Method("dora", "DoRA (weight-decomposed LoRA)", adapter=True,
                                                lora_options={"use_dora": True}, mfu=0.2))
    cfg = load_config(recipe, ["method=dora", "train.max_steps=2"])
    assert method_of(cfg).lora_options == {"use_dora": True}

    plan = P.make_plan(S.read_shape("llama3-8b"), cfg, P.hardware("h100"))
    assert plan.assumptions.mfu == 0.2 and plan.trainable == P.trainable_parameters(S.read_shape("llama3-8b"),
                                                                                      load_config(recipe))

    trainer = train_sft(cfg)[0]
    magnitudes = [n for n, _ in trainer.model.named_parameters() if "lora_magnitude_vector" in n]
    assert magnitudes  # peft built DoRA layers from the entry's options
    out = Path(cfg.output_dir)
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "DoRA (weight-decomposed LoRA) of" in card and "library_name: peft" in card
