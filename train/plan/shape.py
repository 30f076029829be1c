"""What a model is, from its config.json alone (no weights): the decoder's shape, its parameter count and the
parameters LoRA adds. The memory planner (train/plan/planner.py) prices these.

    shape = read_shape("llama3-8b")       # a config.json, a model folder, a name in configs/models/, or a hub id
    shape.parameters().total              # 8_030_261_248, as transformers' own model on the meta device
    lora_parameters(shape, 16, ["all-linear"])

The counts come from a formula for Llama-style decoders (Llama, Mistral, Qwen2/3, Gemma 1-3: tests/test_plan.py checks
them against the model transformers builds on the meta device); other architectures are counted on the meta device.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from train.errors import UserError
from train.methods import method_of
from train.paths import MODELS_DIR


class PlanError(UserError, ValueError):
    """A model or setting the planner cannot use; the message says which and how to fix it."""


# canonical role -> module name, per family (the names LoRA target_modules refer to)
LLAMA_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
               "down": "down_proj"}
FAMILY_NAMES = {"exaone": {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj", "gate": "c_fc_0",
                           "up": "c_fc_1", "down": "c_proj"}}
# families whose layer layout the formulas below describe exactly (tests compare with the meta-device count)
KNOWN_FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "exaone"}


@dataclass(frozen=True)
class ModelShape:
    name: str
    family: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3 / Gemma-3: RMSNorm on each head's query and key
    norms_per_layer: int = 2  # Gemma-2/3: 4 (norms before and after attention and MLP)
    exact_parameters: Optional[int] = None  # counted on the meta device, when that was done
    origin: str = ""  # where the shape came from (shape_for), printed by the planner

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def module_names(self) -> Dict[str, str]:
        return FAMILY_NAMES.get(self.family, LLAMA_NAMES)

    def layer_linears(self) -> Dict[str, Tuple[int, int]]:
        """Linear layers of one decoder layer: module name -> (in_features, out_features)."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        dims = {"q": (h, q), "k": (h, kv), "v": (h, kv), "o": (q, h), "gate": (h, i), "up": (h, i), "down": (i, h)}
        return {self.module_names[role]: d for role, d in dims.items()}

    def parameters(self) -> "ParameterCounts":
        h = self.hidden
        linear = sum(a * b for a, b in self.layer_linears().values())
        bias = ((self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0) + (h if self.o_bias else 0) \
            + ((2 * self.intermediate + h) if self.mlp_bias else 0)
        norms = self.norms_per_layer * h + (2 * self.head_dim if self.qk_norm else 0)
        embedding = self.vocab * h
        return ParameterCounts(embedding=embedding, lm_head=0 if self.tied else embedding,
                               layer_linear=linear, layer_other=bias + norms, layers=self.layers, final_norm=h)


@dataclass(frozen=True)
class ParameterCounts:
    embedding: int
    lm_head: int  # 0 when tied to the embedding
    layer_linear: int  # weights of the linear layers of one decoder layer (what 4-bit quantisation converts)
    layer_other: int  # norms and biases of one decoder layer
    layers: int
    final_norm: int

    @property
    def linear(self) -> int:
        return self.layers * self.layer_linear

    @property
    def per_layer(self) -> int:
        return self.layer_linear + self.layer_other

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.layers * self.per_layer + self.final_norm

    @property
    def non_quantized(self) -> int:
        return self.total - self.linear


def _get(config: dict, *keys, default=None):
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return default


TIED_DEFAULT = {"gemma": True, "gemma2": True, "gemma3_text": True, "gemma3": True}


def shape_from_config(config: dict, name: str = "model") -> ModelShape:
    """A ModelShape from the dict of a config.json (multimodal configs: their text_config)."""
    text = config.get("text_config")
    if isinstance(text, dict) and "hidden_size" not in config:
        config = {**text, "tie_word_embeddings": config.get("tie_word_embeddings", text.get("tie_word_embeddings"))}
    family = str(config.get("model_type", "unknown"))
    hidden = _get(config, "hidden_size", "n_embd", "d_model")
    layers = _get(config, "num_hidden_layers", "num_layers", "n_layer")
    heads = _get(config, "num_attention_heads", "n_head")
    inter = _get(config, "intermediate_size", "ffn_hidden_size", "n_inner")
    vocab = _get(config, "vocab_size")
    missing = [k for k, v in {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                              "intermediate_size": inter, "vocab_size": vocab}.items() if not v]
    if missing:
        raise PlanError(f"{name}: config.json has no {', '.join(missing)}; the planner needs the decoder's shape. "
                        f"Pass --model with a Llama-style config.json (see configs/models/)")
    kv = _get(config, "num_key_value_heads", default=heads)
    head_dim = _get(config, "head_dim", default=hidden // heads)
    tied = config.get("tie_word_embeddings")
    if tied is None:
        tied = TIED_DEFAULT.get(family, family not in KNOWN_FAMILIES)  # transformers' PretrainedConfig default: True
    qkv_bias = family == "qwen2" or bool(config.get("attention_bias"))
    return ModelShape(
        name=name, family=family, hidden=int(hidden), layers=int(layers), heads=int(heads), kv_heads=int(kv),
        head_dim=int(head_dim), intermediate=int(inter), vocab=int(vocab), tied=bool(tied), qkv_bias=qkv_bias,
        o_bias=bool(config.get("attention_bias")) and family != "qwen2", mlp_bias=bool(config.get("mlp_bias")),
        qk_norm=family in ("qwen3", "gemma3_text", "gemma3"),
        norms_per_layer=4 if family.startswith(("gemma2", "gemma3")) else 2)


def resolve_model_source(source: str) -> Tuple[Optional[Path], str]:
    """(path of a config.json, display name) for a file, a model folder, or a name in configs/models/; (None, source)
    for anything else (a hub id)."""
    p = Path(source).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        return p / "config.json", source
    if p.is_file():
        return p, source
    for candidate in (MODELS_DIR / f"{source}.json", MODELS_DIR / source / "config.json"):
        if candidate.is_file():
            return candidate, source
    return None, source


def read_shape(source: str, revision: Optional[str] = None, trust_remote_code: bool = False) -> ModelShape:
    """The model's shape from its config.json: a file, a model folder, a name in configs/models/ (e.g. llama3-8b), or
    a hub id (read with transformers.AutoConfig, which needs hub access or a cached copy). No weights are read."""
    path, name = resolve_model_source(source)
    if path is not None:
        try:
            shape = shape_from_config(json.loads(path.read_text(encoding="utf-8")), name)
        except (OSError, json.JSONDecodeError) as e:
            raise PlanError(f"{path}: not a readable config.json ({e})") from None
    else:
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
        except Exception as e:  # no hub access, gated repository, unknown id
            names = ", ".join(sorted(p.stem for p in MODELS_DIR.glob("*.json")))
            raise PlanError(f"cannot read the config of '{source}' ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}). Pass --model with a local config.json or model folder, "
                            f"or one of: {names}") from None
        shape = shape_from_config(config.to_dict(), name)
    if shape.family not in KNOWN_FAMILIES:  # the formula assumes a Llama-style layer: count this one exactly
        try:
            shape = replace(shape, exact_parameters=count_on_meta(source, trust_remote_code)[0])
        except Exception:  # transformers cannot build it here (remote code, not a causal LM): keep the formula
            pass
    return shape


def shape_for(source: str, revision: Optional[str] = None, trust_remote_code: bool = False) -> Optional[ModelShape]:
    """The shape of a recipe's model, found the same way by `python -m launch run` and `python -m launch plan`, first
    that works (its `origin` says which):
    1. a config.json, a model folder or a name in configs/models/ (read_shape);
    2. a hub id's config.json from the hub cache, or downloaded when the hub answers one request (no retries);
    3. a hub id listed in a configs/models/*.json under "_hub_ids" (offline, e.g. on a login node without the model);
    4. the size in the name ('Llama-3.1-70B'): a Llama-style shape of that many parameters;
    None when none does."""
    from train.model_source import hub_config_file

    path, _ = resolve_model_source(source)
    if path is not None:
        return read_shape(source, revision, trust_remote_code)
    config = hub_config_file(source, revision)
    if config is not None:
        return replace(read_shape(str(config), trust_remote_code=trust_remote_code), name=source,
                       origin=f"config.json from the hub ({'cache' if 'snapshots' in config.parts else 'downloaded'})")
    for candidate in sorted(MODELS_DIR.glob("*.json")):
        try:
            ids = json.loads(candidate.read_text(encoding="utf-8")).get("_hub_ids", [])
        except (OSError, json.JSONDecodeError):
            continue
        if source in ids:
            return replace(read_shape(str(candidate)), name=source,
                           origin=f"configs/models/{candidate.name}, which lists this hub id")
    shape = shape_from_name(source)
    return replace(shape, origin="a Llama-style shape of the size in the name, config.json not reachable") \
        if shape else None


def count_on_meta(source: str, trust_remote_code: bool = False) -> Tuple[int, Dict[str, Tuple[int, int]]]:
    """Exact parameter count and the decoder's linear layers (name -> (in, out), first layer only), from the model
    built on the meta device by transformers (no memory, no weights; imports torch, so about 5 s)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path, _ = resolve_model_source(source)
    config = AutoConfig.from_pretrained(str(path) if path else source, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    linears = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head and ".0." in f".{name}.":
            linears[name.rsplit(".", 1)[-1]] = (module.in_features, module.out_features)
    return total, linears


def shape_from_parameter_count(parameters: int, name: str = "model") -> ModelShape:
    """A Llama-style decoder of about `parameters` parameters (hidden = 128 x layers, MLP 8/3 x hidden, vocab 32000):
    what the planner assumes when only a size such as '70B' is known."""
    hidden = 128 * max(1, round((128 * parameters / 12) ** (1 / 3) / 128))  # 12 h^2 per layer, layers = h / 128
    inter = 256 * max(1, round(8 * hidden / 3 / 256))
    per_layer = 4 * hidden * hidden + 3 * hidden * inter
    layers = max(1, round((parameters - 2 * 32000 * hidden) / per_layer))
    return ModelShape(name=name, family="llama", hidden=hidden, layers=layers, heads=hidden // 128,
                      kv_heads=hidden // 128, head_dim=128, intermediate=inter, vocab=32000, tied=False)


def shape_from_name(name: str) -> Optional[ModelShape]:
    """'meta-llama/Llama-3.1-70B' -> a ~70B Llama-style shape; None when the name carries no size."""
    match = re.search(r"(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])", name)
    return shape_from_parameter_count(int(float(match.group(1)) * 1e9), name) if match else None


# ----------------------------------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------------------------------


def lora_targets(shape: ModelShape, targets) -> List[str]:
    """Names of the decoder's linear layers that LoRA adapts: all of them for 'all-linear' (peft leaves the output
    layer out), else those whose name is in the list (peft matches the last part of a module's name)."""
    names = list(shape.layer_linears())
    targets = list(targets)
    if targets == ["all-linear"]:
        return names
    chosen = [n for n in names if n in targets]
    unknown = [t for t in targets if t not in names and t not in ("embed_tokens", "lm_head")]
    if unknown and not chosen:
        raise PlanError(f"lora.target_modules {targets}: none is a linear layer of this model (its linear layers: "
                        f"{', '.join(names)}). Use names from that list, or [all-linear]")
    return chosen


def lora_parameters(shape: ModelShape, r: int, targets) -> int:
    """A (r x in) and B (out x r) for every targeted linear layer of every decoder layer."""
    dims = shape.layer_linears()
    return shape.layers * sum(r * (dims[n][0] + dims[n][1]) for n in lora_targets(shape, targets))


def modules_to_save_parameters(shape: ModelShape, modules) -> int:
    counts = shape.parameters()
    sizes = {"embed_tokens": counts.embedding, "lm_head": counts.lm_head or counts.embedding}
    return sum(sizes.get(m, 0) for m in modules)


def trainable_parameters(shape: ModelShape, cfg) -> int:
    if method_of(cfg).trains_base:
        return shape.exact_parameters or shape.parameters().total
    return lora_parameters(shape, cfg.lora.r, cfg.lora.target_modules) + \
        modules_to_save_parameters(shape, cfg.lora.modules_to_save)
