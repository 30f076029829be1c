"""The run configuration: one dataclass schema, the single source of every key and default.

A run is described by a recipe YAML plus `key=value` overrides from the command line:

    python train/sft.py --config configs/recipes/demo_cpu.yaml train.max_steps=10 lora.r=8

`load_config` reads both, rejects unknown keys (naming the closest valid one), wrong types and impossible
combinations before any model is loaded, and returns a typed `Config`. `save_config` writes the resolved
configuration with secrets redacted.
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from train.data.formats import FORMATS
from train.data.templates import NAMED_TEMPLATES
from train.errors import UserError
from train.methods import METHODS


class ConfigError(UserError, ValueError):
    """A mistake in a recipe or an override. The message names the key and says how to fix it."""


# ----------------------------------------------------------------------------------------------------------------------
# Schema. Every key a recipe may set lives here, with its default and a one-line meaning.
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    name_or_path: str = MISSING  # hub id (on a machine with hub access) or a local folder with safetensors weights
    revision: Optional[str] = None  # hub revision (branch, tag or commit)
    dtype: str = "bfloat16"  # float32 | bfloat16 | float16: dtype of the weights that are not quantised
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2 | flash_attention_3 | kernels-community/...
    trust_remote_code: bool = False  # run model code shipped in the repository; off unless a recipe turns it on
    tokenizer_name_or_path: Optional[str] = None  # defaults to model.name_or_path


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])  # or e.g. [q_proj, v_proj]
    bias: str = "none"  # none | all | lora_only
    modules_to_save: List[str] = field(default_factory=list)  # e.g. [embed_tokens, lm_head] when tokens are added


@dataclass
class QLoraSettings:
    quant_type: str = "nf4"  # nf4 | fp4
    double_quant: bool = True
    compute_dtype: str = "bfloat16"  # float32 | bfloat16 | float16
    quant_storage: str = "auto"  # auto (= model.dtype, required for ZeRO-3/FSDP) | uint8 | bfloat16 | float16 | float32


@dataclass
class DataSource:
    path: str = MISSING  # a local file or glob (jsonl, json, parquet, csv) or a hub dataset id
    format: str = "auto"  # auto | messages | alpaca | raft | columns | qa | keywords
    weight: float = 1.0  # relative share of this source in the training mixture
    split: str = "train"  # split name for hub datasets
    columns: Dict[str, str] = field(default_factory=dict)  # format=columns: {system: .., user: .., assistant: ..}
    system_prompt: Optional[str] = None  # system message added to records that have none
    instruction: Optional[str] = None  # instruction used by the keywords format (text + labels)


@dataclass
class DataConfig:
    sources: List[DataSource] = field(default_factory=list)
    eval_sources: List[DataSource] = field(default_factory=list)  # held-out files; empty = split from sources
    max_length: int = 2048  # tokens per packed row / per sample
    packing: bool = True  # pack samples into rows of max_length; samples never attend to each other
    # drop | split | split_all: what to do with samples longer than max_length (always counted). split cuts them into
    # windows and drops the windows without a label token (they would train nothing); split_all keeps those too
    overlong: str = "drop"
    on_error: str = "raise"  # raise | skip: a bad record stops preparation or is skipped and counted
    template: str = "auto"  # auto (tokenizer's own, else chatml) | tokenizer | llama3 | qwen3 | gemma | exaone | chatml
    # qwen3: thinking mode (reasoning_content and <think> blocks trained); False renders the empty <think></think> block
    # (no-think) and drops reasoning_content (counted)
    enable_thinking: bool = False
    # escape | reject | keep: message text holding the tokenizer's special-token strings ('<|im_start|>', '<|eot_id|>')
    # is encoded as plain text (escape), or the record is rejected, or they become control tokens (keep); always counted
    special_tokens_in_content: str = "escape"
    train_on: str = "assistant"  # assistant | last_assistant | all
    role_aliases: Dict[str, str] = field(default_factory=dict)  # e.g. {model: assistant, human: user}
    validation_split: float = 0.05  # fraction held out when eval_sources is empty (deterministic)
    max_eval_samples: int = 1000
    dedup: str = "exact"  # none | exact | near
    near_dup_threshold: float = 0.9  # Jaccard similarity of character 5-gram shingles for dedup=near
    shuffle_passages: bool = True  # raft: shuffle context passages (deterministically per record)
    include_reasoning: bool = True  # raft: put the chain of thought before the answer
    add_tokens: List[str] = field(default_factory=list)  # domain tokens added to the vocabulary (embeddings trained)
    cache_dir: str = ".cache/data"  # prepared, tokenised datasets live here under a fingerprint
    num_proc: int = 1


@dataclass
class TrainConfig:
    max_steps: int = -1  # optimizer steps; -1 = run num_epochs
    num_epochs: float = 1.0
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"  # linear | cosine | constant | constant_with_warmup
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    per_device_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    optim: str = "adamw_torch"  # any transformers optimizer name: adamw_torch | adamw_torch_fused | paged_adamw_8bit ...
    logging_steps: int = 10
    eval_steps: int = 0  # validation loss every N optimizer steps (logged as eval_loss); 0 = none during training
    early_stopping_patience: int = 0  # stop after N evaluations without a better eval_loss and keep the best; 0 = off
    early_stopping_threshold: float = 0.0  # an eval_loss counts as better only if it is lower by more than this
    save_steps: int = 500
    save_total_limit: int = 2
    resume: str = "auto"  # auto (newest complete checkpoint in output_dir) | never | <path to a checkpoint>
    seed: int = 42
    ddp_timeout_s: int = 7200  # collective timeout; raised from the 30 min default for long saves and evals
    # balanced: every optimizer step's rows are dealt out so that data-parallel ranks and micro-batches carry nearly
    # the same work (transformers' BatchRebalanceSampler); random: shuffled, fixed-size micro-batches
    sampler: str = "balanced"
    memory_check: bool = True  # refuse a run the memory plan predicts will not fit (launch plan); false: run anyway


@dataclass
class TrackingConfig:
    # where the Trainer logs (a list): wandb (in wandb_mode, which is disabled by default: nothing is sent),
    # tensorboard (event files in output_dir/runs/), mlflow (pip install sft-launcher[mlflow]), or [none]
    report_to: List[str] = field(default_factory=lambda: ["wandb"])
    wandb_mode: str = "disabled"  # online | offline | disabled
    project: str = "sft"
    entity: Optional[str] = None
    run_name: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    # `python -m launch eval`: encoder for the embedding cosine similarity. multilingual-e5-small (Korean-capable, the
    # default) and all-minilm-l6-v2 (English-only: Korean text gets a warning) are fetched offline by
    # `python -m launch.assets`; a local folder or a hub id works too; none = skip the cosine metric
    embedding_model: str = "multilingual-e5-small"
    embedding_max_length: int = 256  # tokens per text for the encoder (longer texts are cut, for the cosine only)


@dataclass
class SlurmConfig:
    # `python -m launch slurm`: shell lines every job runs first, in order, e.g. [module load cuda/12.4, source
    # ~/venvs/sft/bin/activate]; --setup adds more. None: the repository's .venv when it exists, else the python on
    # the compute node's PATH (the job logs which, and stops when it cannot import torch and transformers)
    setup: List[str] = field(default_factory=list)
    hf_home: Optional[str] = None  # HF_HOME for the job: a shared folder that holds the models (hf download there)
    offline: bool = False  # compute nodes without internet: HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 in the job


@dataclass
class SaveConfig:
    merged: bool = False  # also write the LoRA-merged full model to <output_dir>/merged (python -m launch merge)
    # at the end of training, upload the model (the merged one when save.merged, else the adapter or full weights) and
    # its model card to the hub repository hub_repo_id. The token comes from the environment (HF_TOKEN) or
    # `hf auth login`, never from a recipe. python -m launch push does the same for a finished run
    push_to_hub: bool = False
    hub_repo_id: Optional[str] = None  # <user or organisation>/<name>, e.g. my-org/qwen3-8b-mna-lora
    hub_private: bool = True  # create the repository private (an existing repository keeps its visibility)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: str = "lora"  # full | lora | qlora (train/methods.py)
    lora: LoraSettings = field(default_factory=LoraSettings)
    qlora: QLoraSettings = field(default_factory=QLoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    save: SaveConfig = field(default_factory=SaveConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    output_dir: str = MISSING


CHOICES: Dict[str, tuple] = {
    "method": METHODS,  # the names of train/methods.py's table
    "model.dtype": ("float32", "bfloat16", "float16"),
    "qlora.quant_type": ("nf4", "fp4"),
    "qlora.compute_dtype": ("float32", "bfloat16", "float16"),
    "qlora.quant_storage": ("auto", "uint8", "bfloat16", "float16", "float32"),
    "lora.bias": ("none", "all", "lora_only"),
    "data.overlong": ("drop", "split", "split_all"),
    "data.on_error": ("raise", "skip"),
    "data.template": ("auto", "tokenizer", *NAMED_TEMPLATES),
    "data.train_on": ("assistant", "last_assistant", "all"),
    "data.special_tokens_in_content": ("escape", "reject", "keep"),
    "data.dedup": ("none", "exact", "near"),
    "data.sources.*.format": ("auto", *FORMATS),
    "data.eval_sources.*.format": ("auto", *FORMATS),
    "train.sampler": ("balanced", "random"),
    "train.lr_scheduler": ("linear", "cosine", "constant", "constant_with_warmup"),
    "tracking.wandb_mode": ("online", "offline", "disabled"),
}
REPORT_TO = ("wandb", "tensorboard", "mlflow", "none")  # tracking.report_to: each item is one of these

# Keys users bring from transformers' TrainingArguments (or put in the wrong section): the key that does it here.
ELSEWHERE: Dict[str, str] = {
    "report_to": "tracking.report_to",
    "push_to_hub": "save.push_to_hub",
    "hub_model_id": "save.hub_repo_id",
    "hub_private_repo": "save.hub_private",
    "num_train_epochs": "train.num_epochs",
    "per_device_train_batch_size": "train.per_device_batch_size",
}

# key names whose values are secrets: token, hf_token, wandb_api_key, secret, password ... (not add_tokens)
SECRET_KEY_PATTERN = re.compile(r"(?:^|_)(token|secret|password|api_?key|access_key)$", re.IGNORECASE)
REDACTED = "***redacted***"
HUB_REPO_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def load_config(path: Optional[str | Path], overrides: Optional[List[str]] = None) -> Config:
    """Read a recipe YAML, apply `key=value` overrides, validate, and return a typed Config.

    Raises ConfigError with a message that names the file, the key and the fix.
    """
    overrides = list(overrides or [])
    where = str(path) if path else "<command line>"
    raw: Dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe not found: {p}. Pass an existing YAML file, e.g. --config configs/recipes/demo_cpu.yaml")
        try:
            loaded = OmegaConf.load(p)
        except Exception as e:  # yaml syntax errors carry the line number in their text
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        raw = OmegaConf.to_container(loaded, resolve=False) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: a recipe must be a mapping of keys to values, got {type(raw).__name__}")
        _check_keys(raw, Config, prefix="", where=where)
        tracking = raw.get("tracking")
        if isinstance(tracking, dict) and isinstance(tracking.get("report_to"), str):
            tracking["report_to"] = [tracking["report_to"]]  # report_to: tensorboard, as TrainingArguments takes it

    dotlist = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value. Write e.g. train.max_steps=10")
        key, _ = item.split("=", 1)
        key = key.strip().lstrip("+")
        _check_dotted_key(key, where="command line override")
        dotlist.append(f"{key}={item.split('=', 1)[1]}")

    schema = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}: {_omegaconf_message(e)}") from None
    for item in dotlist:
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        if key == "tracking.report_to" and isinstance(parsed, str):
            parsed = [parsed]
        try:
            OmegaConf.update(merged, key, parsed, force_add=False)
        except (OmegaConfBaseException, ValueError, KeyError, IndexError) as e:
            msg = _omegaconf_message(e) if isinstance(e, OmegaConfBaseException) else str(e)
            raise ConfigError(f"command line override '{item}': {msg}") from None

    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(
            f"{where}: required key(s) not set: {', '.join(missing)}. "
            f"Set them in the recipe or on the command line, e.g. {missing[0]}=..."
        )
    cfg: Config = OmegaConf.to_object(merged)
    validate(cfg, where=where)
    return cfg


def _omegaconf_message(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0]
    if key:
        return f"key '{key}': {msg}. Fix the value's type (see train/config.py for the schema)"
    return msg


def _field_types(cls) -> Dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _unwrap(tp):
    """Optional[X] -> X, List[X] -> ('list', X), Dict[str, X] -> ('dict', X)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        return _unwrap([a for a in args if a is not type(None)][0])
    if origin in (list, List):
        return ("list", args[0] if args else Any)
    if origin in (dict, Dict):
        return ("dict", args[1] if len(args) > 1 else Any)
    return tp


def closest(key: str, valid: List[str]) -> str:
    """The valid key most like `key`: a shared prefix first (rank → r), else difflib's best match."""
    prefixed = [v for v in valid if key.startswith(v) or v.startswith(key)]
    if prefixed:
        return max(prefixed, key=len)
    return difflib.get_close_matches(key, valid, n=1, cutoff=0.0)[0]


def schema_keys(cls=None, prefix: str = "") -> List[str]:
    """Every dotted key of the schema (lists of sections as `data.sources.N.path`)."""
    keys = []
    for name, tp in _field_types(cls or Config).items():
        tp = _unwrap(tp)
        if is_dataclass(tp):
            keys += schema_keys(tp, f"{prefix}{name}.")
        elif isinstance(tp, tuple) and tp[0] == "list" and is_dataclass(tp[1]):
            keys += schema_keys(tp[1], f"{prefix}{name}.N.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _unknown(key: str, valid: List[str], prefix: str, where: str) -> ConfigError:
    """The closest key of the same section; a key of that name in another section (train.report_to ->
    tracking.report_to) or the key that does what a TrainingArguments name did (hub_model_id -> save.hub_repo_id)
    wins; a token never belongs in a recipe."""
    if SECRET_KEY_PATTERN.search(key):
        return ConfigError(f"{where}: unknown key '{prefix}{key}': secrets are never read from a recipe. Put the "
                           f"token in the environment instead (HF_TOKEN for the hub, WANDB_API_KEY for W&B) or log in "
                           f"(`hf auth login`, `wandb login`).")
    same_name = [k for k in schema_keys() if k.rsplit(".", 1)[-1] == key and k != f"{prefix}{key}"]
    moved = ELSEWHERE.get(key) or (same_name[0] if len(same_name) == 1 else None)
    suggestion = moved if moved else f"{prefix}{closest(key, valid)}"
    return ConfigError(f"{where}: unknown key '{prefix}{key}'. Did you mean '{suggestion}'? "
                       f"Valid keys here: {', '.join(sorted(valid))}.")


def _check_keys(raw: Dict[str, Any], cls, prefix: str, where: str) -> None:
    types = _field_types(cls)
    for key, value in raw.items():
        if key not in types:
            raise _unknown(str(key), list(types), prefix, where)
        tp = _unwrap(types[key])
        if is_dataclass(tp) and isinstance(value, dict):
            _check_keys(value, tp, f"{prefix}{key}.", where)
        elif isinstance(tp, tuple) and tp[0] == "list" and is_dataclass(tp[1]) and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    _check_keys(item, tp[1], f"{prefix}{key}.{i}.", where)


def _check_dotted_key(key: str, where: str) -> None:
    parts = re.split(r"\.|\[(\d+)\]", key)
    parts = [p for p in parts if p]
    cls: Any = Config
    prefix = ""
    for part in parts:
        if cls is None:
            return
        if isinstance(cls, tuple):  # inside a list or dict
            kind, inner = cls
            if kind == "list" and not part.isdigit():
                raise ConfigError(f"{where}: '{prefix}{part}' must be a list index, e.g. {prefix}0")
            cls = inner if is_dataclass(inner) else None
            prefix += f"{part}."
            continue
        types = _field_types(cls)
        if part not in types:
            raise _unknown(part, list(types), prefix, where)
        tp = _unwrap(types[part])
        cls = tp if (is_dataclass(tp) or isinstance(tp, tuple)) else None
        prefix += f"{part}."


# ----------------------------------------------------------------------------------------------------------------------
# Validation: impossible values and combinations fail here, before any model is loaded.
# ----------------------------------------------------------------------------------------------------------------------


def _get(cfg: Config, dotted: str):
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: Config, where: str = "config") -> None:
    def fail(key: str, msg: str):
        raise ConfigError(f"{where}: {key}: {msg}")

    for key, allowed in CHOICES.items():
        if "*" in key:
            head, tail = key.split(".*.")
            for i, item in enumerate(_get(cfg, head)):
                value = getattr(item, tail)
                if value not in allowed:
                    fail(f"{head}.{i}.{tail}", f"'{value}' is not one of {', '.join(allowed)}")
            continue
        value = _get(cfg, key)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            fail(key, f"'{value}' is not one of {', '.join(allowed)}.{hint}")

    positive = ["data.max_length", "train.per_device_batch_size", "train.gradient_accumulation_steps",
                "train.logging_steps", "train.save_steps", "lora.r", "lora.alpha"]
    for key in positive:
        if _get(cfg, key) <= 0:
            fail(key, f"must be > 0, got {_get(cfg, key)}")
    if not 0.0 <= cfg.lora.dropout < 1.0:
        fail("lora.dropout", f"must be in [0, 1), got {cfg.lora.dropout}")
    if cfg.train.learning_rate <= 0:
        fail("train.learning_rate", f"must be > 0, got {cfg.train.learning_rate}")
    if not 0.0 <= cfg.train.warmup_ratio < 1.0:
        fail("train.warmup_ratio", f"must be in [0, 1), got {cfg.train.warmup_ratio}")
    if cfg.train.max_steps == 0 or cfg.train.max_steps < -1:
        fail("train.max_steps", f"must be -1 (use num_epochs) or a positive number of steps, got {cfg.train.max_steps}")
    if cfg.train.max_steps == -1 and cfg.train.num_epochs <= 0:
        fail("train.num_epochs", "must be > 0 when train.max_steps is -1")
    if cfg.train.eval_steps < 0:
        fail("train.eval_steps", "must be >= 0 (0 turns evaluation during training off)")
    if cfg.train.early_stopping_patience < 0:
        fail("train.early_stopping_patience", "must be >= 0 (0 turns early stopping off)")
    if cfg.train.early_stopping_threshold < 0:
        fail("train.early_stopping_threshold", f"must be >= 0, got {cfg.train.early_stopping_threshold}")
    if cfg.train.early_stopping_patience:
        if not cfg.train.eval_steps:
            fail("train.early_stopping_patience", "early stopping watches the validation loss: set train.eval_steps "
                 "> 0 too, e.g. train.eval_steps=50")
        if cfg.train.save_steps % cfg.train.eval_steps:
            fail("train.save_steps", f"with early stopping the best model is restored from a checkpoint, so "
                 f"train.save_steps ({cfg.train.save_steps}) must be a multiple of train.eval_steps "
                 f"({cfg.train.eval_steps}), e.g. train.save_steps={cfg.train.eval_steps}")
    if not cfg.eval.embedding_model.strip():
        fail("eval.embedding_model", "is empty: name an encoder (multilingual-e5-small, all-minilm-l6-v2, a folder or a hub id) or none")
    if cfg.eval.embedding_max_length <= 0:
        fail("eval.embedding_max_length", f"must be > 0, got {cfg.eval.embedding_max_length}")
    if not 0.0 <= cfg.data.validation_split < 1.0:
        fail("data.validation_split", f"must be in [0, 1), got {cfg.data.validation_split}")
    if not 0.0 < cfg.data.near_dup_threshold <= 1.0:
        fail("data.near_dup_threshold", f"must be in (0, 1], got {cfg.data.near_dup_threshold}")
    if not cfg.data.sources:
        fail("data.sources", "at least one data source is needed, e.g. data.sources: [{path: data/train.jsonl}]")
    for i, src in enumerate(list(cfg.data.sources) + list(cfg.data.eval_sources)):
        if src.weight <= 0:
            fail(f"data.sources.{i}.weight", f"must be > 0, got {src.weight}")
        if src.format == "columns" and not {"user", "assistant"} <= set(src.columns):
            fail(f"data.sources.{i}.columns", "format 'columns' needs at least {user: <column>, assistant: <column>} "
                 "(system optional), e.g. columns: {system: system_prompt, user: user_prompt, assistant: assistant}")
    for i, line in enumerate(cfg.slurm.setup):
        if not str(line).strip():
            fail(f"slurm.setup.{i}", "is empty: give a shell line such as 'module load cuda/12.4', or remove it")
    for alias, role in cfg.data.role_aliases.items():
        if role not in ("system", "user", "assistant"):
            fail(f"data.role_aliases.{alias}", f"maps to '{role}', which is not one of system, user, assistant")

    # combinations
    method = METHODS[cfg.method]
    if cfg.save.merged and not method.mergeable:
        fail("save.merged", f"only applies to methods that train an adapter "
             f"({', '.join(m.name for m in METHODS.values() if m.mergeable)}); method={cfg.method} already saves "
             f"full weights")
    if cfg.data.add_tokens and method.adapter:
        needed = {"embed_tokens", "lm_head"}
        if not needed <= set(cfg.lora.modules_to_save):
            fail("data.add_tokens", "new tokens need trainable embeddings under LoRA: set "
                 "lora.modules_to_save=[embed_tokens,lm_head] (names for Llama/Qwen/Gemma)")
    if cfg.train.eval_steps and cfg.data.validation_split == 0 and not cfg.data.eval_sources:
        fail("train.eval_steps", "evaluation needs a validation set: set data.validation_split > 0 or data.eval_sources")
    if cfg.model.attn_implementation.startswith("flash_attention") and cfg.model.dtype == "float32":
        fail("model.attn_implementation", "FlashAttention needs bf16 or fp16 weights: set model.dtype=bfloat16 "
             "or use attn_implementation=sdpa")
    if cfg.tracking.wandb_mode != "disabled" and not cfg.tracking.project:
        fail("tracking.project", "W&B tracking needs a project name")
    report_to = list(cfg.tracking.report_to)
    for name in report_to:
        if name not in REPORT_TO:
            close = difflib.get_close_matches(str(name), REPORT_TO, n=1)
            fail("tracking.report_to", f"'{name}' is not one of {', '.join(REPORT_TO)}."
                 + (f" Did you mean '{close[0]}'?" if close else ""))
    if "none" in report_to and len(report_to) > 1:
        fail("tracking.report_to", f"[none] turns every tracker off and cannot be combined with others, got {report_to}")
    if cfg.tracking.wandb_mode != "disabled" and "wandb" not in report_to:
        fail("tracking.wandb_mode", f"is {cfg.tracking.wandb_mode} but tracking.report_to ({report_to}) does not list "
             f"wandb: add it, e.g. tracking.report_to=[wandb,tensorboard], or set tracking.wandb_mode=disabled")
    if cfg.save.push_to_hub:
        if not cfg.save.hub_repo_id:
            fail("save.hub_repo_id", "save.push_to_hub needs the repository to upload to: set save.hub_repo_id, "
                 "e.g. save.hub_repo_id=my-org/qwen3-8b-mna-lora")
    if cfg.save.hub_repo_id is not None and not HUB_REPO_ID.fullmatch(cfg.save.hub_repo_id):
        fail("save.hub_repo_id", f"'{cfg.save.hub_repo_id}' is not a hub repository id: write <user or "
             f"organisation>/<name> (letters, digits, '-', '_', '.'), e.g. my-org/qwen3-8b-mna-lora")


def resolved_quant_storage(cfg: Config) -> str:
    """QLoRA storage dtype: 'auto' follows the model dtype, which ZeRO-3 and FSDP need to flatten 4-bit weights."""
    return cfg.model.dtype if cfg.qlora.quant_storage == "auto" else cfg.qlora.quant_storage


# ----------------------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------------------


def redact(obj: Any) -> Any:
    """Replace the value of any key that looks like a secret, and any hub/W&B token found inside strings."""
    if isinstance(obj, dict):
        return {k: (REDACTED if SECRET_KEY_PATTERN.search(str(k)) and v not in (None, "") else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return re.sub(r"\bhf_[A-Za-z0-9]{20,}\b", REDACTED, obj)
    return obj


def to_dict(cfg: Config) -> Dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def save_config(cfg: Config, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = OmegaConf.to_yaml(OmegaConf.create(redact(to_dict(cfg))))
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
