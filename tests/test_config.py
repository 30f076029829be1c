"""Config loading, overrides, and every validation error: each names the key and says how to fix it."""

from pathlib import Path

import pytest
import yaml

from train.config import REDACTED, Config, ConfigError, load_config, redact, resolved_quant_storage, save_config

REPO = Path(__file__).resolve().parent.parent
MINIMAL = {"model": {"name_or_path": "some/model"}, "data": {"sources": [{"path": "a.jsonl"}]}, "output_dir": "out"}


def write(tmp_path, data, name="r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return p


def error(tmp_path, data=None, overrides=()) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, data or MINIMAL), list(overrides))
    return str(e.value)


def test_defaults_and_required_keys(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert isinstance(cfg, Config)
    assert cfg.method == "lora" and cfg.data.max_length == 2048 and cfg.data.packing is True
    assert cfg.tracking.wandb_mode == "disabled" and cfg.model.trust_remote_code is False
    assert cfg.lora.target_modules == ["all-linear"]
    assert cfg.data.sources[0].path == "a.jsonl" and cfg.data.sources[0].format == "auto"


def test_overrides_of_every_kind(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), [
        "train.max_steps=7", "train.learning_rate=3e-5", "method=qlora", "data.packing=false",
        "lora.target_modules=[q_proj,v_proj]", "data.sources.0.weight=2.5", "tracking.wandb_mode=offline",
        "output_dir=elsewhere", "data.role_aliases={model: assistant}", "model.name_or_path=./local",
    ])
    assert cfg.train.max_steps == 7 and cfg.train.learning_rate == pytest.approx(3e-5)
    assert cfg.method == "qlora" and cfg.data.packing is False
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.sources[0].weight == 2.5 and cfg.tracking.wandb_mode == "offline"
    assert cfg.output_dir == "elsewhere" and cfg.data.role_aliases == {"model": "assistant"}
    assert cfg.model.name_or_path == "./local"


@pytest.mark.parametrize("key,suggestion", [
    ("train.max_step=3", "train.max_steps"),
    ("lora.rank=8", "lora.r"),
    ("data.max_len=512", "data.max_length"),
    ("data.sources.0.pth=x", "data.sources.0.path"),
    ("tracking.wandb=offline", "tracking.wandb_mode"),
])
def test_unknown_override_names_closest_key(tmp_path, key, suggestion):
    msg = error(tmp_path, overrides=[key])
    assert f"unknown key '{key.split('=')[0]}'" in msg and f"Did you mean '{suggestion}'" in msg


def test_unknown_key_in_recipe_names_file_and_closest_key(tmp_path):
    bad = {**MINIMAL, "train": {"learning_rat": 1e-4}}
    msg = error(tmp_path, bad)
    assert "r.yaml" in msg and "train.learning_rat" in msg and "train.learning_rate" in msg
    bad = {**MINIMAL, "data": {"sources": [{"path": "a.jsonl", "fromat": "alpaca"}]}}
    assert "data.sources.0.format" in error(tmp_path, bad)


def test_wrong_type_names_key(tmp_path):
    msg = error(tmp_path, overrides=["train.max_steps=abc"])
    assert "train.max_steps" in msg and "abc" in msg
    msg = error(tmp_path, {**MINIMAL, "data": {"sources": [{"path": "a"}], "max_length": "long"}})
    assert "data.max_length" in msg


@pytest.mark.parametrize("override,key", [
    ("method=qlor", "method"),
    ("tracking.wandb_mode=on", "tracking.wandb_mode"),
    ("data.template=llama", "data.template"),
    ("data.train_on=assistants", "data.train_on"),
    ("data.on_error=ignore", "data.on_error"),
    ("data.overlong=truncate", "data.overlong"),
    ("data.sources.0.format=sharegpt", "data.sources.0.format"),
    ("model.dtype=fp16", "model.dtype"),
    ("lora.r=0", "lora.r"),
    ("lora.dropout=1.5", "lora.dropout"),
    ("data.max_length=0", "data.max_length"),
    ("train.max_steps=0", "train.max_steps"),
    ("train.learning_rate=-1", "train.learning_rate"),
    ("train.per_device_batch_size=0", "train.per_device_batch_size"),
    ("data.validation_split=1.5", "data.validation_split"),
    ("data.sources.0.weight=0", "data.sources.0.weight"),
])
def test_bad_values_fail_with_key(tmp_path, override, key):
    assert f"{key}:" in error(tmp_path, overrides=[override])


def test_did_you_mean_for_choices(tmp_path):
    assert "Did you mean 'qlora'" in error(tmp_path, overrides=["method=qlor"])


@pytest.mark.parametrize("overrides,key,fix", [
    (["method=full", "save.merged=true"], "save.merged", "lora"),
    (["data.add_tokens=[파스]"], "data.add_tokens", "lora.modules_to_save"),
    (["train.eval_steps=10", "data.validation_split=0"], "train.eval_steps", "validation_split"),
    (["model.attn_implementation=flash_attention_2", "model.dtype=float32"], "model.attn_implementation", "bfloat16"),
    (["data.sources.0.format=columns"], "data.sources.0.columns", "user"),
])
def test_impossible_combinations(tmp_path, overrides, key, fix):
    msg = error(tmp_path, overrides=overrides)
    assert key in msg and fix in msg


def test_missing_required_and_missing_file(tmp_path):
    msg = error(tmp_path, {"data": {"sources": [{"path": "a"}]}})
    assert "model.name_or_path" in msg and "output_dir" in msg
    with pytest.raises(ConfigError, match="recipe not found"):
        load_config(tmp_path / "nope.yaml")
    msg = error(tmp_path, {**MINIMAL, "data": {"sources": []}})
    assert "data.sources" in msg


def test_override_without_equals(tmp_path):
    assert "key=value" in error(tmp_path, overrides=["train.max_steps"])


def test_invalid_yaml_names_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("model: {name_or_path: x\n  oops: [", encoding="utf-8")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(p)


def test_qlora_storage_follows_model_dtype(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["method=qlora", "model.dtype=bfloat16"])
    assert resolved_quant_storage(cfg) == "bfloat16"
    cfg = load_config(write(tmp_path, MINIMAL), ["method=qlora", "qlora.quant_storage=uint8"])
    assert resolved_quant_storage(cfg) == "uint8"


def test_saved_config_round_trips_and_redacts_secrets(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["tracking.run_name=run-hf_abcdefghijklmnopqrstuvwxyz123456"])
    path = save_config(cfg, tmp_path / "out" / "run_config.yaml")
    text = path.read_text(encoding="utf-8")
    assert "hf_abcdefghijklmnopqrstuvwxyz123456" not in text and REDACTED in text
    again = load_config(path)  # the saved file is itself a valid recipe
    assert again.data.sources[0].path == "a.jsonl" and again.train == cfg.train
    assert redact({"wandb_api_key": "k", "hf_token": "t", "nested": {"password": "p", "ok": 1}}) == {
        "wandb_api_key": REDACTED, "hf_token": REDACTED, "nested": {"password": REDACTED, "ok": 1}}


def test_every_shipped_recipe_loads():
    recipes = sorted((REPO / "configs" / "recipes").glob("*.yaml"))
    assert len(recipes) >= 6
    for recipe in recipes:
        cfg = load_config(recipe)
        header = recipe.read_text(encoding="utf-8").splitlines()[:12]
        assert any(("train/sft.py" in line and "--config" in line and recipe.name in line) for line in header), recipe
        assert cfg.output_dir


@pytest.mark.parametrize("where,key,suggestion", [
    ("recipe", {"report_to": ["tensorboard"]}, "tracking.report_to"),  # a TrainingArguments name at the top
    ("override", "train.report_to=[tensorboard]", "tracking.report_to"),  # in the wrong section
    ("override", "report_to=tensorboard", "tracking.report_to"),
    ("override", "push_to_hub=true", "save.push_to_hub"),
    ("override", "train.hub_model_id=me/x", "save.hub_repo_id"),
    ("override", "train.wandb_mode=offline", "tracking.wandb_mode"),
])
def test_unknown_key_points_to_the_key_that_does_it(tmp_path, where, key, suggestion):
    msg = error(tmp_path, {**MINIMAL, **key}) if where == "recipe" else error(tmp_path, overrides=[key])
    assert f"Did you mean '{suggestion}'" in msg


def test_a_token_key_is_refused_with_where_tokens_come_from(tmp_path):
    for key in ("save.hub_token=hf_abc", "hf_token=x", "tracking.wandb_api_key=x"):
        msg = error(tmp_path, overrides=[key])
        assert "never read from a recipe" in msg and "HF_TOKEN" in msg


@pytest.mark.parametrize("overrides,key,fix", [
    (["tracking.report_to=[tensorbord]"], "tracking.report_to", "Did you mean 'tensorboard'"),
    (["tracking.report_to=[none,tensorboard]"], "tracking.report_to", "cannot be combined"),
    (["tracking.wandb_mode=online", "tracking.report_to=[tensorboard]"], "tracking.wandb_mode", "add it"),
    (["save.push_to_hub=true"], "save.hub_repo_id", "save.hub_repo_id=my-org/"),
    (["save.hub_repo_id=my org/x"], "save.hub_repo_id", "is not a hub repository id"),
])
def test_tracking_and_push_settings_are_checked(tmp_path, overrides, key, fix):
    msg = error(tmp_path, overrides=overrides)
    assert key in msg and fix in msg


def test_report_to_and_push_settings_load(tmp_path):
    cfg = load_config(write(tmp_path, {**MINIMAL, "tracking": {"report_to": "tensorboard"}}),
                      ["save.push_to_hub=true", "save.hub_repo_id=my-org/qwen3-8b-mna-lora"])
    assert cfg.tracking.report_to == ["tensorboard"] and cfg.save.hub_private is True
    assert load_config(write(tmp_path, MINIMAL)).tracking.report_to == ["wandb"]
