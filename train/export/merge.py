"""Merge a trained LoRA / QLoRA adapter into its base model, one safetensors shard at a time.

peft's `merge_and_unload` needs the whole model in memory (a 70B base in bf16 is 140 GB of host RAM). Here the base is
read shard by shard: each shard's tensors are loaded, the adapter's update of the modules in that shard is added
(W + alpha/r * B @ A, computed in float32, rounded once to the output dtype), and the shard is written before the next
is read. What is held at once is one shard and the adapter's tensors of one module, read from their file on demand.
The output keeps the base's shard layout (file names and keys), so `model.safetensors.index.json` maps the same way.

QLoRA: training saw the 4-bit base, dequantised. Each weight the 4-bit loader quantises (transformers' choice of
Linear layers, asked on a model built on the meta device) is quantised and dequantised with bitsandbytes exactly as
the loader does (same quant type, double quantisation, block size and storage) before the adapter's update is added,
so the merged model computes what the trained model computed; the same quantisation rounding lands on the Linear
layers without an adapter too. The other tensors (embeddings, norms, the output layer) are the base's own.

Adapter tensors that are not LoRA factors replace the base's tensor of the same name: `modules_to_save`
(embed_tokens, lm_head when tokens were added) and biases trained with lora.bias. DoRA magnitudes are merged as peft
does (m / ||W + dW|| row-wise times W + dW).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from train.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ADAPTER_PREFIX = "base_model.model."
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class MergeError(UserError, RuntimeError):
    """The adapter cannot be merged as asked (wrong folder, a method without an adapter, shapes that do not fit)."""


@dataclass(frozen=True)
class FourBit:
    """How the QLoRA base was loaded for training (train/model.py quantization_config)."""

    quant_type: str  # nf4 | fp4
    double_quant: bool
    dtype: torch.dtype  # model.dtype: the weights are cast to it before quantisation; dequantised weights come back in it
    storage: torch.dtype  # bnb_4bit_quant_storage


@dataclass
class MergeResult:
    out_dir: Path
    shards: List[str]
    merged_modules: List[str]  # base weights an adapter update was added to
    replaced: List[str]  # base tensors the adapter replaced (modules_to_save, trained biases)
    quantized: int  # weights passed through the 4-bit round trip (QLoRA)
    total_bytes: int
    seconds: float
    largest_shard_bytes: int = 0
    config_changes: Dict[str, object] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------------


def model_folder(name_or_path: str, revision: Optional[str] = None) -> Path:
    """A local folder as is; a hub id is downloaded (safetensors, configs, tokenizer, model code) to the hub cache."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, revision=revision,
                                      allow_patterns=["*.safetensors", "*.json", "*.py", "*.model", "*.txt",
                                                      "*.jinja", "tokenizer*"]))
    except Exception as e:  # noqa: BLE001 - offline, gated, misspelt: one message with the fix
        raise MergeError(f"base model '{name_or_path}' is neither a local folder nor downloadable from the hub "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Point model.name_or_path "
                         f"at a local folder with its safetensors, or log in (`hf auth login`) for a gated model") from None


def weight_shards(folder: Path) -> Dict[str, List[str]]:
    """{shard file: [tensor names]} in the base's order, from model.safetensors.index.json or model.safetensors."""
    index = folder / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        shards: Dict[str, List[str]] = {}
        for key, file in weight_map.items():
            shards.setdefault(file, []).append(key)
        return dict(sorted(shards.items()))
    if (folder / SINGLE).is_file():
        with safe_open(folder / SINGLE, framework="pt") as f:
            return {SINGLE: list(f.keys())}
    raise MergeError(f"{folder} has no {SINGLE} or {INDEX}: the merge reads safetensors weights only")


class Adapter:
    """A saved peft LoRA adapter: its config, and its tensors read from the file one module at a time."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        config_file, weights = self.folder / "adapter_config.json", self.folder / "adapter_model.safetensors"
        if not config_file.is_file() or not weights.is_file():
            raise MergeError(f"{self.folder} holds no LoRA adapter (adapter_config.json and adapter_model.safetensors): "
                             f"pass --adapter with the training run's output_dir or one of its checkpoint-N folders")
        self.config = json.loads(config_file.read_text())
        if self.config.get("peft_type") != "LORA":
            raise MergeError(f"{config_file}: peft_type {self.config.get('peft_type')} is not LORA; only LoRA "
                             f"adapters (lora, qlora, DoRA) merge here")
        if self.config.get("fan_in_fan_out"):
            raise MergeError(f"{config_file}: fan_in_fan_out adapters (GPT-2 style Conv1D layers) are not supported")
        self._file = safe_open(weights, framework="pt")
        self.factors: Dict[str, Dict[str, str]] = {}  # base weight name -> {"A": key, "B": key, "m": key?, "kind"}
        self.replacements: Dict[str, str] = {}  # base tensor name -> adapter key
        for key in self._file.keys():
            name = key[len(ADAPTER_PREFIX):] if key.startswith(ADAPTER_PREFIX) else key
            match = re.fullmatch(r"(.+)\.(lora_A|lora_B)\.weight|(.+)\.(lora_embedding_A|lora_embedding_B)"
                                 r"|(.+)\.lora_magnitude_vector(?:\.weight)?", name)
            if match is None:
                self.replacements[name.replace(".base_layer.", ".")] = key
                continue
            module = match.group(1) or match.group(3) or match.group(5)
            entry = self.factors.setdefault(f"{module}.weight", {"kind": "linear"})
            part = match.group(2) or match.group(4)
            if part is None:
                entry["m"] = key
            else:
                entry[part[-1]] = key
                if part.startswith("lora_embedding"):
                    entry["kind"] = "embedding"
        for weight, entry in self.factors.items():
            if "A" not in entry or "B" not in entry:
                raise MergeError(f"{weights}: {weight} has an incomplete LoRA pair ({sorted(entry)})")

    def scaling(self, weight_name: str, rank: int) -> float:
        """lora_alpha / r (alpha / sqrt(r) with rsLoRA); alpha_pattern entries as peft matches them."""
        from peft.utils.other import get_pattern_key

        module = weight_name[: -len(".weight")]
        alpha = self.config["lora_alpha"]
        patterns = self.config.get("alpha_pattern") or {}
        if patterns:
            alpha = patterns.get(get_pattern_key(list(patterns), module), alpha)
        return alpha / (rank ** 0.5 if self.config.get("use_rslora") else rank)

    def tensor(self, key: str) -> torch.Tensor:
        return self._file.get_tensor(key)

    def delta(self, weight_name: str) -> torch.Tensor:
        """The update of one base weight, in float32: scaling * B @ A (transposed for an embedding)."""
        entry = self.factors[weight_name]
        a, b = self.tensor(entry["A"]).float(), self.tensor(entry["B"]).float()
        update = b @ a * self.scaling(weight_name, a.shape[0])
        return update.T if entry["kind"] == "embedding" else update

    def apply(self, weight_name: str, weight: torch.Tensor) -> torch.Tensor:
        """weight (float32) with this adapter's update; DoRA rescales each row to its trained magnitude."""
        update = self.delta(weight_name)
        if update.shape != weight.shape:
            raise MergeError(f"the adapter's update of {weight_name} has shape {tuple(update.shape)}, the base's weight "
                             f"{tuple(weight.shape)}: this adapter was not trained on this base model")
        merged = weight + update
        magnitude_key = self.factors[weight_name].get("m")
        if magnitude_key is not None:
            magnitude = self.tensor(magnitude_key).float()
            merged = (magnitude / torch.linalg.norm(merged, dim=1)).unsqueeze(1) * merged
        return merged


def four_bit_weights(folder: Path, four_bit: FourBit, trust_remote_code: bool = False) -> Dict[str, int]:
    """{weight name: block size} of the weights transformers' bitsandbytes loader quantises for this model: its
    Linear layers except the ones it keeps in 16 bits (the output layer, tied and fp32 modules). Asked of the loader's
    own code, on the model built on the meta device (no weight is read)."""
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear
    from transformers.quantizers.auto import AutoHfQuantizer

    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=four_bit.quant_type,
                               bnb_4bit_use_double_quant=four_bit.double_quant,
                               bnb_4bit_quant_storage=four_bit.storage)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, dtype=four_bit.dtype)
    quantizer = AutoHfQuantizer.from_config(quant)
    skip = quantizer.get_modules_to_not_convert(model, quant.llm_int8_skip_modules,
                                                getattr(model, "_keep_in_fp32_modules", None))
    model = replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=quant)
    return {f"{name}.weight": module.weight.blocksize for name, module in model.named_modules()
            if type(module).__name__ == "Linear4bit"}


def through_four_bits(weight: torch.Tensor, four_bit: FourBit, blocksize: int) -> torch.Tensor:
    """The weight as the 4-bit model computes with it: cast to model.dtype, quantised, dequantised (bitsandbytes)."""
    import bitsandbytes.functional as bnbf

    packed, state = bnbf.quantize_4bit(weight.to(four_bit.dtype).contiguous(), blocksize=blocksize,
                                       compress_statistics=four_bit.double_quant, quant_type=four_bit.quant_type,
                                       quant_storage=four_bit.storage)
    return bnbf.dequantize_4bit(packed, state)


# ----------------------------------------------------------------------------------------------------------------------
# The merge
# ----------------------------------------------------------------------------------------------------------------------


def merge_shards(base: Path, adapter_dir: Path, out_dir: Path, dtype: torch.dtype, four_bit: Optional[FourBit] = None,
                 trust_remote_code: bool = False) -> MergeResult:
    """Write the merged weights (and the base's config.json, generation_config.json and model code, with the dtype
    and what the adapter changed) to out_dir, one base shard at a time."""
    started = time.time()
    base, out_dir = Path(base), Path(out_dir)
    shards = weight_shards(base)
    adapter = Adapter(adapter_dir)
    base_keys = {key for keys in shards.values() for key in keys}
    missing = sorted(set(adapter.factors) - base_keys)
    if missing:
        raise MergeError(f"the adapter in {adapter_dir} updates {len(missing)} weight(s) the base model {base} does "
                         f"not have, e.g. {missing[0]}: merge it onto the base it was trained on (model.name_or_path)")
    extra = sorted(set(adapter.replacements) - base_keys)  # e.g. lm_head.weight of a tied model, trained apart
    four_bit_blocks = four_bit_weights(base, four_bit, trust_remote_code) if four_bit else {}

    out_dir.mkdir(parents=True, exist_ok=True)
    weight_map: Dict[str, str] = {}
    merged, replaced, total, largest = [], [], 0, 0
    files = list(shards)
    for i, file in enumerate(files):
        tensors: Dict[str, torch.Tensor] = {}
        with safe_open(base / file, framework="pt") as f:
            for key in shards[file]:
                if key in adapter.replacements:
                    tensor = adapter.tensor(adapter.replacements[key])
                    replaced.append(key)
                else:
                    tensor = f.get_tensor(key)
                    if key in four_bit_blocks:
                        tensor = through_four_bits(tensor, four_bit, four_bit_blocks[key])
                    if key in adapter.factors:
                        tensor = adapter.apply(key, tensor.float())
                        merged.append(key)
                tensors[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        if i == len(files) - 1:
            for key in extra:
                tensors[key] = adapter.tensor(adapter.replacements[key]).to(dtype)
                replaced.append(key)
        for key in tensors:
            tensors[key] = tensors[key].contiguous()
            weight_map[key] = file
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        total, largest = total + size, max(largest, size)
        save_file(tensors, str(out_dir / file), metadata={"format": "pt"})
        del tensors
    if len(files) > 1:
        (out_dir / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                indent=2) + "\n")
    changes = _write_config(base, out_dir, dtype, adapter, extra)
    for pattern in ("generation_config.json", "*.py"):
        for path in base.glob(pattern):
            shutil.copy2(path, out_dir / path.name)
    return MergeResult(out_dir=out_dir, shards=files, merged_modules=merged, replaced=replaced,
                       quantized=len(four_bit_blocks), total_bytes=total, seconds=round(time.time() - started, 1),
                       largest_shard_bytes=largest, config_changes=changes)


def _write_config(base: Path, out_dir: Path, dtype: torch.dtype, adapter: Adapter, extra: List[str]) -> Dict:
    """The base's config.json with the merged dtype, no quantization_config, the vocabulary of a replaced embedding,
    and untied embeddings where the output layer was trained apart from a tied input embedding."""
    config = json.loads((base / "config.json").read_text())
    changes: Dict[str, object] = {}
    name = str(dtype).removeprefix("torch.")
    config["dtype"] = name
    config.pop("torch_dtype", None)
    config.pop("quantization_config", None)
    for key, adapter_key in adapter.replacements.items():
        if key.endswith("embed_tokens.weight") or key in ("transformer.wte.weight",):
            rows = adapter.tensor(adapter_key).shape[0]
            text = config.get("text_config", config)
            if text.get("vocab_size") != rows:
                text["vocab_size"] = changes["vocab_size"] = rows
    if extra and any(k.endswith("lm_head.weight") for k in extra) and config.get("tie_word_embeddings", False):
        config["tie_word_embeddings"] = changes["tie_word_embeddings"] = False
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return changes


# ----------------------------------------------------------------------------------------------------------------------
# The command: python -m launch merge
# ----------------------------------------------------------------------------------------------------------------------


def merge_run(cfg, adapter_dir: Optional[str | Path] = None, out_dir: Optional[str | Path] = None,
              dtype: Optional[str] = None, tokenizer=None) -> MergeResult:
    """Merge a run's adapter (default: output_dir) into the recipe's base model, into out_dir (default:
    output_dir/merged): weights, config, generation config, tokenizer (the trained one) and a model card."""
    from train.methods import method_of

    method = method_of(cfg)
    if not method.mergeable:
        raise MergeError(f"method={cfg.method} trains every weight and saves the full model in {cfg.output_dir}; "
                         f"there is no adapter to merge. Export or push that folder directly")
    adapter_dir = Path(adapter_dir or cfg.output_dir)
    out_dir = Path(out_dir or Path(cfg.output_dir) / "merged")
    dtype = dtype or cfg.model.dtype
    if dtype not in DTYPES:
        raise MergeError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if out_dir.resolve() == adapter_dir.resolve():
        raise MergeError(f"--out {out_dir} is the adapter's folder: write the merged model elsewhere")
    four_bit = None
    if method.quantized_base:
        from train.config import resolved_quant_storage

        storage = resolved_quant_storage(cfg)
        four_bit = FourBit(cfg.qlora.quant_type, cfg.qlora.double_quant, DTYPES[cfg.model.dtype],
                           DTYPES.get(storage, torch.uint8))
    Adapter(adapter_dir)  # a missing adapter fails here, before a base is downloaded
    base = model_folder(cfg.model.name_or_path, cfg.model.revision)
    result = merge_shards(base, adapter_dir, out_dir, DTYPES[dtype], four_bit, cfg.model.trust_remote_code)

    if tokenizer is None:
        tokenizer = _trained_tokenizer(cfg, adapter_dir)
    tokenizer.save_pretrained(out_dir)
    _set_generation_ids(out_dir, tokenizer)
    from train.card import write_merged_card

    write_merged_card(cfg, adapter_dir, out_dir, result, dtype)
    return result


def _trained_tokenizer(cfg, adapter_dir: Path):
    """The tokenizer saved with the adapter (chat template, pad token and added tokens as trained); else the
    recipe's tokenizer set up as training sets it up."""
    from transformers import AutoTokenizer

    if (adapter_dir / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(adapter_dir)
    from train.data.templates import setup_tokenizer
    from train.model import load_tokenizer

    tokenizer = load_tokenizer(cfg)
    setup_tokenizer(tokenizer, cfg.data)
    return tokenizer


def _set_generation_ids(out_dir: Path, tokenizer) -> None:
    """generation_config.json with the trained pad token; the end-of-turn token among the stop tokens."""
    path = out_dir / "generation_config.json"
    generation = json.loads(path.read_text()) if path.is_file() else {}
    eos = generation.get("eos_token_id", json.loads((out_dir / "config.json").read_text()).get("eos_token_id"))
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    generation["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    if tokenizer.pad_token_id is not None:
        generation["pad_token_id"] = tokenizer.pad_token_id
    path.write_text(json.dumps(generation, indent=2) + "\n")
