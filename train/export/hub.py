"""Push a finished run to the Hugging Face Hub: the adapter (or full weights) or the merged model, with its model card.

What is uploaded is decided here, file by file (`upload_plan`): the weights, configs and tokenizer, the model card
(README.md), and the run's small records (resolved recipe with secrets redacted, train_results.json, metrics.jsonl,
the loss curve, the evaluation report and the TensorBoard event files). Never: checkpoints, W&B and MLflow folders,
the data reports and predictions (they quote the training and evaluation data), GGUF files. Every file is read
before the upload and the push is refused if any holds a token (the values of HF_TOKEN, HUGGING_FACE_HUB_TOKEN,
WANDB_API_KEY and the token in use, or anything shaped like a hub token). The upload itself is one commit through
huggingface_hub's `create_commit`; the token comes from the environment or `hf auth login`, never from a recipe.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from train.errors import UserError

# top-level files of a model folder (adapter, full or merged)
MODEL_FILES = ("*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
               "adapter_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "README.md")
REMOTE_CODE = "*.py"  # model code a trust_remote_code base (EXAONE-3) ships: the merged folder needs it
# the run's records (paths relative to the folder)
RECORD_FILES = ("run_config.yaml", "train_results.json", "metrics.jsonl", "loss_curve.png", "eval/eval_report.md",
                "eval/eval_report.json", "eval/eval_chart.png", "runs/*/events.out.tfevents.*")
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
HUB_TOKEN_SHAPE = re.compile(rb"\bhf_[A-Za-z0-9]{30,}\b")


class PushError(UserError, RuntimeError):
    """A push that cannot or must not happen (no token, offline, a secret in a file). The message says how to fix it."""


@dataclass(frozen=True)
class UploadPlan:
    folder: Path
    repo_id: str
    private: bool
    files: Dict[str, Path]  # path in the repository -> local file
    commit_message: str


def upload_plan(folder: str | Path, repo_id: str, private: bool, commit_message: str,
                with_records: bool = True) -> UploadPlan:
    """The exact files a push uploads from `folder`, sorted by their path in the repository."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise PushError(f"{folder} holds no model (config.json or adapter_config.json): train first, or push the "
                        f"merged model with --merged after `python -m launch merge`")
    files: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and (any(fnmatch.fnmatch(path.name, p) for p in MODEL_FILES)
                               or (path.suffix == ".py" and (folder / "config.json").is_file()
                                   and "auto_map" in json.loads((folder / "config.json").read_text()))):
            files[path.name] = path
    if with_records:
        for pattern in RECORD_FILES:
            for path in sorted(folder.glob(pattern)):
                if path.is_file():
                    files[path.relative_to(folder).as_posix()] = path
    return UploadPlan(folder, repo_id, private, dict(sorted(files.items())), commit_message)


def commit_message(cfg, merged: bool) -> str:
    """One line: what the upload is, of which base, from which run."""
    from train.methods import method_of

    method = method_of(cfg)
    steps = ""
    results = Path(cfg.output_dir) / "train_results.json"
    if results.is_file():
        steps = f", {json.loads(results.read_text()).get('steps')} steps"
    what = (f"{method.title} merged into {cfg.model.name_or_path}" if merged else
            f"{method.title} adapter for {cfg.model.name_or_path}" if method.adapter else
            f"{method.title} of {cfg.model.name_or_path}")
    return f"Upload {what} (run {Path(cfg.output_dir).name}{steps})"


def secrets_in_environment(token: Optional[str] = None) -> List[str]:
    values = [os.environ.get(name) for name in SECRET_ENV] + [token]
    return sorted({v for v in values if v and len(v) >= 8})


def check_no_secrets(plan: UploadPlan, token: Optional[str] = None) -> None:
    """Refuse the push if any file to upload contains a token (read in full, binary files included)."""
    secrets = [s.encode() for s in secrets_in_environment(token)]
    for name, path in plan.files.items():
        data = path.read_bytes()
        if any(s in data for s in secrets) or HUB_TOKEN_SHAPE.search(data):
            raise PushError(f"{path} contains a token (a secret from the environment or a hub token): nothing was "
                            f"uploaded. Remove it from that file, then push again")


def hub_token() -> str:
    """The token huggingface_hub would use: HF_TOKEN, else the one `hf auth login` stored."""
    from huggingface_hub import get_token

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise PushError("HF_HUB_OFFLINE is set, so the hub cannot be reached: unset it (or HF_HUB_OFFLINE=0) to push")
    token = get_token()
    if not token:
        raise PushError("pushing to the hub needs a token with write access: export HF_TOKEN=hf_... (or run "
                        "`hf auth login`); the token is never read from a recipe")
    return token


def push(plan: UploadPlan, endpoint: Optional[str] = None) -> str:
    """Create the repository if needed (private as planned), then upload every planned file in one commit.
    Returns the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    token = hub_token()
    check_no_secrets(plan, token)
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)
    api.create_repo(plan.repo_id, private=plan.private, exist_ok=True, repo_type="model")
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in plan.files.items()]
    info = api.create_commit(plan.repo_id, operations, commit_message=plan.commit_message, repo_type="model")
    return info.commit_url


def push_run(cfg, merged: bool = False, folder: Optional[str | Path] = None, endpoint: Optional[str] = None) -> str:
    """python -m launch push (and save.push_to_hub at the end of training): the run's adapter or full weights, or
    with merged=True its merged model (output_dir/merged), to save.hub_repo_id."""
    if not cfg.save.hub_repo_id:
        raise PushError("set save.hub_repo_id (e.g. save.hub_repo_id=my-org/qwen3-8b-mna-lora) to say where to push")
    run_dir = Path(cfg.output_dir)
    folder = Path(folder) if folder else (run_dir / "merged" if merged else run_dir)
    plan = upload_plan(folder, cfg.save.hub_repo_id, cfg.save.hub_private, commit_message(cfg, merged),
                       with_records=not merged)
    if merged:  # the run's records live in the run folder: the merged upload carries them too
        extra = upload_plan(run_dir, cfg.save.hub_repo_id, cfg.save.hub_private, plan.commit_message).files
        records = {k: v for k, v in extra.items() if not any(fnmatch.fnmatch(k, p) for p in MODEL_FILES)}
        plan = UploadPlan(folder, plan.repo_id, plan.private, dict(sorted({**plan.files, **records}.items())),
                          plan.commit_message)
    print(f"pushing {len(plan.files)} files from {folder} to {plan.repo_id} "
          f"({'private' if plan.private else 'public'} if new): {plan.commit_message}", flush=True)
    url = push(plan, endpoint)
    print(f"pushed: {url}", flush=True)
    return url
