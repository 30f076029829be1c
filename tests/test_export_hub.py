"""train/export/hub.py against a local stand-in for the hub (tests/hub_standin.py; the upload client is
huggingface_hub's own): save.push_to_hub at the end of training and `python -m launch push` upload exactly the
planned files in one commit with the planned message, into a private repository, and never a secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.assets import tiny_model_dir
from tests.hub_standin import HubStandIn
from tests.tiny_model import write_tiny_recipe

REPO = Path(__file__).resolve().parent.parent
HF_SECRET = "hf_" + "Qx7" * 12
WANDB_SECRET = "wandb_v1_" + "k3" * 20
ADAPTER_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
                 "loss_curve.png", "metrics.jsonl", "run_config.yaml", "tokenizer.json", "tokenizer_config.json",
                 "train_results.json"]
MERGED_FILES = ["README.md", "chat_template.jinja", "config.json", "generation_config.json", "loss_curve.png",
                "metrics.jsonl", "model.safetensors", "run_config.yaml", "tokenizer.json", "tokenizer_config.json",
                "train_results.json"]


def run(args, hub: HubStandIn, **env):
    environment = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_TOKEN": HF_SECRET,
                   "WANDB_API_KEY": WANDB_SECRET, "TOKENIZERS_PARALLELISM": "false", **env}
    return subprocess.run(args, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_training_pushes_the_adapter_and_the_push_command_the_merged_model(tmp_path):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir(tmp_path / "llama"), max_steps=2)
    push = ["save.push_to_hub=true", "save.hub_repo_id=my-org/tiny-lora"]
    with HubStandIn() as hub:
        trained = run([sys.executable, "train/sft.py", "--config", str(recipe), *push], hub)
        assert trained.returncode == 0, trained.stderr[-3000:]
        assert hub.repos == [{"name": "tiny-lora", "organization": "my-org", "visibility": "private",
                              "type": "model"}]
        assert len(hub.commits) == 1
        commit = hub.commits[0]
        assert commit["repo"] == "my-org/tiny-lora"
        assert commit["message"] == f"Upload LoRA adapter for {tmp_path / 'llama'} (run out, 2 steps)"
        assert sorted(commit["files"]) == ADAPTER_FILES
        out = tmp_path / "out"
        for name, data in commit["files"].items():
            assert data == (out / name).read_bytes(), name  # uploaded as written
        assert hub.tokens and all(t == f"Bearer {HF_SECRET}" for t in hub.tokens)  # the token travels only here
        assert hub.cards and hub.cards[-1] == (out / "README.md").read_text(encoding="utf-8")

        merged = subprocess.run([sys.executable, "-m", "launch", "merge", "--config", str(recipe), *push], cwd=REPO,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
        assert merged.returncode == 0, merged.stderr[-3000:]
        pushed = run([sys.executable, "-m", "launch", "push", "--config", str(recipe), "--merged", *push], hub)
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        commit = hub.commits[1]
        assert commit["message"] == f"Upload LoRA merged into {tmp_path / 'llama'} (run out, 2 steps)"
        assert sorted(commit["files"]) == MERGED_FILES
        assert commit["files"]["README.md"] == (out / "merged" / "README.md").read_bytes()

    for commit in hub.commits:  # no secret in any uploaded file, binary files included
        for name, data in commit["files"].items():
            assert HF_SECRET.encode() not in data and WANDB_SECRET.encode() not in data, name


def test_a_secret_in_a_file_stops_the_push_before_anything_is_sent(tmp_path, monkeypatch):
    from train.export.hub import PushError, push, upload_plan

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    (folder / "metrics.jsonl").write_text('{"loss": 1.0}\n')
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "optimizer.pt").write_bytes(b"x")
    (folder / "predictions.jsonl").write_text('{"reference": "private data"}\n')
    plan = upload_plan(folder, "me/x", True, "Upload")
    assert sorted(plan.files) == ["adapter_config.json", "adapter_model.safetensors", "metrics.jsonl"]
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    monkeypatch.setenv("WANDB_API_KEY", WANDB_SECRET)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with HubStandIn() as hub:
        (folder / "metrics.jsonl").write_text(f'{{"loss": 1.0, "note": "{WANDB_SECRET}"}}\n')
        with pytest.raises(PushError, match="metrics.jsonl contains a token"):
            push(plan, endpoint=hub.url)
        (folder / "metrics.jsonl").write_text('{"token": "hf_' + "a" * 34 + '"}\n')  # any hub-token shape
        with pytest.raises(PushError, match="contains a token"):
            push(plan, endpoint=hub.url)
        assert hub.repos == [] and hub.commits == []  # refused before any request


def test_push_without_a_token_or_offline_fails_fast(tmp_path, monkeypatch):
    from train.export.hub import PushError, hub_token

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PushError, match="HF_HUB_OFFLINE"):
        hub_token()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no stored login either
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "token"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    with pytest.raises(PushError, match="export HF_TOKEN"):
        hub_token()
