"""train/export/merge.py: the streamed, shard-by-shard merge equals peft's merge_and_unload (every tensor and the
logits) for LoRA, DoRA and QLoRA (onto the dequantised 4-bit base, as training saw it); `python -m launch merge` writes
a folder transformers loads; its memory is bounded by a shard, not by the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launch.assets import tiny_model_dir
from tests.tiny_model import write_tiny_recipe
from train.config import load_config

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
KOREAN = "한국의 수도는 서울입니다. 진통과 해열 효과가 있는 파스형 의약품입니다."


@pytest.fixture(scope="module")
def sharded_base(tmp_path_factory):
    """The tiny Llama written as 12 safetensors shards (about 40 KB each), with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("base")
    source = tiny_model_dir(folder / "source")
    AutoModelForCausalLM.from_pretrained(source).save_pretrained(folder / "sharded", max_shard_size="40KB")
    AutoTokenizer.from_pretrained(source).save_pretrained(folder / "sharded")
    return folder / "sharded"


def make_adapter(cfg, dora: bool = False):
    """An adapter as training saves it, with non-zero LoRA B (and perturbed modules_to_save), without training."""
    from peft import LoraConfig, get_peft_model

    from train.model import apply_lora, load_base_model, load_tokenizer

    if dora:
        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, target_modules="all-linear", use_dora=True)
        model = get_peft_model(load_base_model(cfg), lora)
    else:
        model = apply_lora(load_base_model(cfg), cfg)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name or "magnitude" in name:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(cfg.output_dir)
    load_tokenizer(cfg).save_pretrained(cfg.output_dir)
    return model.eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("method", ["lora", "dora", "qlora"])
def test_streamed_merge_equals_peft_merge_and_unload(sharded_base, tmp_path, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.export.merge import merge_run
    from train.model import load_base_model

    overrides = ["method=qlora" if method == "qlora" else "method=lora", "lora.target_modules=[all-linear]"]
    if method == "lora":
        overrides.append("lora.modules_to_save=[lm_head]")  # a tensor the adapter replaces whole
    cfg = load_config(write_tiny_recipe(tmp_path, sharded_base), overrides)
    trained = make_adapter(cfg, dora=method == "dora")

    result = merge_run(cfg, dtype="float32")
    assert len(result.shards) == 12 and len(result.merged_modules) == 14  # 7 Linear layers x 2 blocks
    assert result.quantized == (14 if method == "qlora" else 0)  # every Linear but the output layer is 4-bit
    merged = AutoModelForCausalLM.from_pretrained(result.out_dir).eval()

    base = load_base_model(cfg)
    if method == "qlora":
        base = base.dequantize()  # the weights the 4-bit forward computed with
    reference = PeftModel.from_pretrained(base, cfg.output_dir).merge_and_unload().eval()
    ours, theirs = merged.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.allclose(ours[key], theirs[key], atol=1e-6, rtol=0), key
    changed = [k for k in ours if not torch.equal(ours[k], load_base_model(cfg).state_dict()[k])] \
        if method != "qlora" else result.merged_modules
    assert len(changed) >= 14  # the adapter really changed the weights

    ids = torch.tensor([AutoTokenizer.from_pretrained(result.out_dir)(KOREAN)["input_ids"]])
    assert torch.allclose(logits(merged, ids), logits(reference, ids), atol=1e-5)
    assert torch.allclose(logits(merged, ids), logits(trained, ids), atol=1e-4)  # what the trained model computes


def test_bfloat16_merge_rounds_once(sharded_base, tmp_path):
    """A bf16 merge adds in float32 and rounds once: within one bf16 step of the float32 merge everywhere."""
    from safetensors.torch import load_file

    from train.export.merge import merge_run

    cfg = load_config(write_tiny_recipe(tmp_path, sharded_base), ["lora.target_modules=[all-linear]"])
    make_adapter(cfg)
    exact = merge_run(cfg, out_dir=tmp_path / "f32", dtype="float32")
    rounded = merge_run(cfg, out_dir=tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((rounded.out_dir / "config.json").read_text())["dtype"] == "bfloat16"
    for shard in exact.shards:
        a, b = load_file(exact.out_dir / shard), load_file(rounded.out_dir / shard)
        for key in a:
            assert b[key].dtype == torch.bfloat16
            assert torch.equal(a[key].to(torch.bfloat16), b[key]), key  # round-to-nearest of the exact sum


def test_merge_command_writes_a_folder_transformers_loads(sharded_base, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = load_config(write_tiny_recipe(tmp_path, sharded_base), ["lora.target_modules=[q_proj,v_proj]"])
    trained = make_adapter(cfg)
    (Path(cfg.output_dir) / "README.md").write_text("---\nbase_model: x\n---\n# out\n\n## Training\n- steps: 4\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "launch", "merge", "--config", str(tmp_path / "recipe.yaml"),
                           "--dtype", "float32"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = Path(cfg.output_dir) / "merged"
    assert "merged 4 weights" in done.stdout and str(out) in done.stdout
    index = json.loads((out / "model.safetensors.index.json").read_text())
    base_index = json.loads((sharded_base / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == base_index["weight_map"]  # the base's layout, shard for shard
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "merged" in card and "- steps: 4" in card  # the run's own card
    generation = json.loads((out / "generation_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert generation["pad_token_id"] == tokenizer.pad_token_id
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([tokenizer(KOREAN)["input_ids"]])
    assert torch.allclose(logits(merged, ids), logits(trained, ids), atol=1e-4)


def test_merge_refusals_name_the_fix(sharded_base, tmp_path):
    from train.export.merge import MergeError, merge_run

    recipe = write_tiny_recipe(tmp_path, sharded_base)
    with pytest.raises(MergeError, match="no adapter to merge"):
        merge_run(load_config(recipe, ["method=full"]))
    with pytest.raises(MergeError, match="holds no LoRA adapter"):
        merge_run(load_config(recipe))  # nothing trained yet
    cfg = load_config(recipe, ["lora.target_modules=[q_proj]"])
    make_adapter(cfg)
    other = tiny_model_dir(tmp_path / "wider", hidden=96)  # a different base: the shapes do not fit
    with pytest.raises(MergeError, match="not trained on this base"):
        merge_run(load_config(recipe, [f"model.name_or_path={other}", "lora.target_modules=[q_proj]"]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "launch", "merge", "--config", str(recipe), "method=full"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "no adapter to merge" in done.stderr and "Traceback" not in done.stderr


MEASURE = """
import json, sys, time
sys.path.insert(0, {repo!r})
from tests.peak_memory import PeakSampler, anonymous_rss
import torch
from train.export.merge import merge_shards
import bitsandbytes, safetensors, transformers, peft  # imported before the baseline
baseline = anonymous_rss()
sampler = PeakSampler(); sampler.start()
result = merge_shards({base!r}, {adapter!r}, {out!r}, torch.{dtype})
sampler.stop.set(); sampler.join()
print(json.dumps({{"growth": sampler.peak - baseline, "largest_shard": result.largest_shard_bytes,
                  "model": result.total_bytes, "shards": len(result.shards), "seconds": result.seconds}}))
"""


def measure_merge(base: Path, adapter: Path, out: Path, dtype: str = "float32") -> dict:
    """The merge's peak anonymous memory above what the process held before it (tests/peak_memory.py's sampler)."""
    code = MEASURE.format(repo=str(REPO), base=str(base), adapter=str(adapter), out=str(out), dtype=dtype)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_merge_memory_is_bounded_by_a_shard_not_the_model(tmp_path):
    """SmolLM2-135M (real weights, 12 shards of ~45 MB in float32): the merge's memory grows by about two shards
    (one read, one written), far below the model's size."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launch.assets import smollm2_135m_instruct

    source = smollm2_135m_instruct()
    base = tmp_path / "base"
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.save_pretrained(base, max_shard_size="50MB")
    AutoTokenizer.from_pretrained(source).save_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    peft_model.save_pretrained(tmp_path / "adapter")
    del model, peft_model

    numbers = measure_merge(base, tmp_path / "adapter", tmp_path / "merged")
    print(f"merge of SmolLM2-135M: {numbers}")
    assert numbers["shards"] >= 10
    assert numbers["growth"] < 3 * numbers["largest_shard"] + 64 * 2**20
    assert numbers["growth"] < 0.5 * numbers["model"]
