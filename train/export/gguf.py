"""Write a GGUF file (llama.cpp's format, what Ollama runs) from a merged or fully fine-tuned model folder, with the
`gguf` package: llama.cpp's own Python writer, its tensor names (`gguf.get_tensor_name_map`) and its quantisers.

What each architecture needs follows llama.cpp's convert_hf_to_gguf.py:
- Llama (and EXAONE-3's Llama-shaped layers): llama.cpp rotates pairs of adjacent values, transformers the two
  halves of a head, so the q and k projections' rows are permuted (LlamaModel.permute); EXAONE keeps the halves.
  Llama-3.1 rope scaling is written as the `rope_freqs` tensor llama.cpp multiplies the frequencies with.
- Gemma, Gemma-2, Gemma-3: RMSNorm computes x * (1 + w): llama.cpp stores 1 + w. Their tied output layer is dropped.
- Qwen2, Qwen3: the weights as they are (Qwen3's q/k norms included).
The tokenizer goes in as llama.cpp reads it: byte-level BPE (`gpt2`: tokens, merges and the pre-tokenizer's name, which
says how llama.cpp splits text before merging) or a sentencepiece-style vocabulary (`llama`, Gemma: tokens with scores
and byte tokens), the special token ids, and the chat template.

Tensors are written one at a time (header and tensor table first, then each tensor read from its safetensors shard,
converted and quantised): memory stays at one tensor. 1-D tensors and norms stay float32, as llama.cpp wants.
Types the `gguf` package quantises: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1. The k-quants (q4_k_m, ...) are
llama.cpp's C++ quantiser: an f16 file is written and `llama-quantize` runs on it when it is installed, else the
command to run is in the error (or let Ollama quantise: `ollama create --quantize q4_K_M`).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from train.errors import UserError

PYTHON_QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
LLAMA_QUANTIZE = ("q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k", "q3_k_m", "q3_k_s", "q3_k_l", "q2_k", "iq4_xs")
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 3, 4, 5, 6


class ExportError(UserError, RuntimeError):
    """The model or its tokenizer cannot be written as GGUF (an architecture or tokenizer llama.cpp would not read the
    same way, a missing tool). The message says what and the way out."""


@dataclass(frozen=True)
class Architecture:
    gguf_name: str  # llama.cpp's architecture name (general.architecture)
    permute_qk: bool = False  # llama.cpp's rope on adjacent pairs: permute the q/k rows of transformers' half layout
    norm_plus_one: bool = False  # the model's RMSNorm computes x * (1 + w); llama.cpp stores 1 + w
    softcapping: bool = False  # gemma2: attention and final logit soft-capping
    sliding_window: bool = False  # gemma2/3: the local layers' window
    # What llama.cpp assumes instead of reading from the file (gemma2/3, src/llama-model.cpp): every `swa_period`-th
    # layer is global, the others sliding; attention scores are scaled by 1/sqrt(head_dim), or by
    # 1/sqrt(hidden/heads) for the layer count of the 27B model.
    swa_period: int = 0
    layers_27b: int = 0


ARCHITECTURES: Dict[str, Architecture] = {  # transformers model_type -> how llama.cpp has it
    "llama": Architecture("llama", permute_qk=True),
    "qwen2": Architecture("qwen2"),
    "qwen3": Architecture("qwen3"),
    "gemma": Architecture("gemma", norm_plus_one=True),
    "gemma2": Architecture("gemma2", norm_plus_one=True, softcapping=True, sliding_window=True, swa_period=2,
                           layers_27b=46),
    "gemma3_text": Architecture("gemma3", norm_plus_one=True, sliding_window=True, swa_period=6, layers_27b=62),
    "exaone": Architecture("exaone"),
}

# Pre-tokenizers llama.cpp implements, by the regex a tokenizer.json splits with (the byte-level BPE models here).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PRE = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}


# ----------------------------------------------------------------------------------------------------------------------
# The tokenizer, as llama.cpp reads it
# ----------------------------------------------------------------------------------------------------------------------


def tokenizer_kind(tokenizer_json: dict) -> Tuple[str, str]:
    """(tokenizer.ggml.model, tokenizer.ggml.pre) for a tokenizer.json: how llama.cpp must split and merge to give the
    same ids. A tokenizer it would split differently is refused rather than exported to tokenise silently worse."""
    model = tokenizer_json.get("model", {})
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    types = [s.get("type") for s in steps]
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return "llama", "default"  # sentencepiece-style BPE (Gemma): pieces with \u2581 and <0xXX> byte tokens
    if model.get("type") == "BPE" and types and types[-1] == "ByteLevel":
        if types == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
            regex = steps[0].get("pattern", {}).get("Regex")
            if regex in SPLIT_PRE:
                return "gpt2", SPLIT_PRE[regex]
        if types == ["ByteLevel"] and steps[0].get("use_regex", True):
            return "gpt2", "gpt-2"  # GPT-2's own split (SmolLM2 as shipped in the demo asset, the tiny test model)
        if (types == ["Digits", "ByteLevel"] and steps[0].get("individual_digits")
                and steps[1].get("use_regex", True)):
            return "gpt2", "smollm"
    raise ExportError(f"GGUF export: this tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}) is not one llama.cpp is "
                      f"known here to reproduce (Llama-3, Qwen2/3, GPT-2, SmolLM and sentencepiece-style vocabularies "
                      f"are); llama.cpp would split text differently and the model would see other token ids")


def vocabulary(tokenizer, tokenizer_json: dict, n_vocab: int, kind: str) -> Tuple[List[str], List[int], List[float]]:
    """Token strings, types and scores for ids 0..n_vocab-1 (the embedding's rows). Added special tokens are CONTROL,
    other added tokens USER_DEFINED in plain text (llama.cpp matches them whole in the text), byte tokens <0xXX> BYTE,
    rows no token uses `[PAD<id>]` UNUSED. Sentencepiece-style scores follow the vocabulary order (a lower id merges
    first), as its merges were learnt."""
    by_id = {i: t for t, i in tokenizer_json["model"]["vocab"].items()}
    added = {t["id"]: t for t in tokenizer_json.get("added_tokens", [])}
    for i, token in tokenizer.added_tokens_decoder.items():
        added.setdefault(i, {"id": i, "content": token.content, "special": token.special})
    if max([*by_id, *added]) >= n_vocab:
        raise ExportError(f"the tokenizer has ids up to {max([*by_id, *added])} but the model's embedding only "
                          f"{n_vocab} rows: export the merged model trained with this tokenizer")
    tokens, types, scores = [], [], []
    for i in range(n_vocab):
        if i in added:
            content = added[i]["content"]
            tokens.append(content if added[i]["special"] or kind != "llama" else content.replace("\u2581", " "))
            special = added[i]["special"] or (content.startswith("<|") and content.endswith("|>"))
            types.append(TOKEN_CONTROL if special else TOKEN_USER_DEFINED)
            scores.append(0.0)
        elif i in by_id:
            token = by_id[i]
            tokens.append(token)
            is_byte = kind == "llama" and len(token) == 6 and token.startswith("<0x") and token.endswith(">")
            types.append(TOKEN_BYTE if is_byte else TOKEN_NORMAL)
            scores.append(-float(i) if kind == "llama" else 0.0)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
            scores.append(0.0)
    return tokens, types, scores


def _merges(tokenizer_json: dict) -> List[str]:
    merges = tokenizer_json["model"].get("merges") or []
    if merges and isinstance(merges[0], list):  # transformers >= 4.45 writes pairs; llama.cpp wants "a b"
        return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
                for pair in merges]
    return list(merges)


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def add_tokenizer(writer, tokenizer, n_vocab: int, end_of_turn: Optional[str] = None) -> None:
    """The tokenizer's metadata (tokenizer.ggml.*) and its chat template (tokenizer.chat_template)."""
    tokenizer_json = json.loads(tokenizer.backend_tokenizer.to_str())
    kind, pre = tokenizer_kind(tokenizer_json)
    tokens, types, scores = vocabulary(tokenizer, tokenizer_json, n_vocab, kind)
    writer.add_tokenizer_model(kind)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if kind == "llama":
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(False)
    else:
        writer.add_token_merges(_merges(tokenizer_json))
    for name, token_id in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                           ("unk", tokenizer.unk_token_id), ("pad", tokenizer.pad_token_id)):
        if token_id is not None:
            getattr(writer, f"add_{name}_token_id")(token_id)
    if end_of_turn is not None:  # llama.cpp stops generation at its end-of-generation tokens, this one included
        end_id = tokenizer.convert_tokens_to_ids(end_of_turn)
        if isinstance(end_id, int) and end_id != tokenizer.unk_token_id:
            writer.add_eot_token_id(end_id)
    writer.add_add_bos_token(_adds_bos(tokenizer))
    writer.add_add_eos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


# ----------------------------------------------------------------------------------------------------------------------
# Hyper-parameters
# ----------------------------------------------------------------------------------------------------------------------


def _rope(config: dict, layer_type: str = "full_attention") -> dict:
    """The rope parameters of one attention kind, from transformers 5's rope_parameters or the older rope_theta and
    rope_scaling keys."""
    params = dict(config.get("rope_parameters") or {})
    if layer_type in params:
        params = dict(params[layer_type])
    elif params and all(isinstance(v, dict) for v in params.values()):
        params = dict(next(iter(params.values())))
    if "rope_theta" not in params and "rope_theta" in config:
        params["rope_theta"] = config["rope_theta"]
    scaling = config.get("rope_scaling") or {}
    for key, value in scaling.items():
        params.setdefault(key, value)
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params["type"]
    return params


def llama3_rope_factors(config: dict) -> Optional[np.ndarray]:
    """Llama-3.1's frequency scaling as the `rope_freqs` tensor llama.cpp multiplies the rotary wavelengths with."""
    rope = _rope(config)
    if rope.get("rope_type") != "llama3":
        return None
    base = rope.get("rope_theta", 10000.0)
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old / low, old / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def exportable_architecture(config: dict) -> Architecture:
    """How llama.cpp has the model of this config.json; an architecture it does not have here, or would compute
    differently, is an ExportError."""
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ExportError(f"GGUF export: model_type '{model_type}' is not supported here; supported: "
                          f"{', '.join(ARCHITECTURES)} (transformers' model_type names)")
    arch = ARCHITECTURES[model_type]
    check_assumed_hyperparameters(config, arch)
    return arch


def check_assumed_hyperparameters(config: dict, arch: Architecture) -> None:
    """llama.cpp (and so Ollama) takes some Gemma-2/3 settings from the architecture, not from the file; a model whose
    config.json says otherwise would load there without a word and compute something else. Real Gemma checkpoints
    agree with what llama.cpp assumes."""
    if not arch.swa_period:
        return
    heads, layers = config["num_attention_heads"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    assumed = config["hidden_size"] // heads if layers == arch.layers_27b else head_dim
    scalar = config.get("query_pre_attn_scalar", assumed)
    if scalar != assumed:
        what = "head_dim" if layers != arch.layers_27b else "hidden_size/num_attention_heads, at the 27B's layer count"
        raise ExportError(f"GGUF export: llama.cpp and Ollama scale this {arch.gguf_name} model's attention scores by "
                          f"1/sqrt({assumed}) ({what}; GGUF has no key for it), but its config.json has "
                          f"query_pre_attn_scalar {scalar}: the file would give other outputs there. Only a model "
                          f"whose query_pre_attn_scalar is {assumed} exports faithfully.")
    period = arch.swa_period
    assumed_types = ["sliding_attention" if i % period < period - 1 else "full_attention" for i in range(layers)]
    pattern = config.get("sliding_window_pattern")  # older Gemma-3 config.json files say it this way
    types = config.get("layer_types") or (["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                                           for i in range(layers)] if pattern else assumed_types)
    if list(types) != assumed_types:
        raise ExportError(f"GGUF export: llama.cpp and Ollama make every {period}th layer of a {arch.gguf_name} model "
                          f"global and the others sliding-window (GGUF has no key for it), but this config.json's "
                          f"layer_types are {types}: the file would give other outputs there.")


def add_hyperparameters(writer, config: dict, arch: Architecture, file_type: int) -> None:
    """llama.cpp's {arch}.* keys from config.json."""
    get = lambda *keys, default=None: next((config[k] for k in keys if config.get(k) is not None), default)  # noqa
    heads = get("num_attention_heads", "n_head")
    head_dim = get("head_dim", default=get("hidden_size") // heads)
    writer.add_context_length(get("max_position_embeddings", "n_positions", default=8192))
    writer.add_embedding_length(get("hidden_size"))
    writer.add_block_count(get("num_hidden_layers", "num_layers"))
    writer.add_feed_forward_length(get("intermediate_size"))
    writer.add_head_count(heads)
    writer.add_head_count_kv(get("num_key_value_heads", default=heads))
    writer.add_layer_norm_rms_eps(get("rms_norm_eps", "layer_norm_epsilon", default=1e-6))
    writer.add_vocab_size(get("vocab_size"))
    if arch.gguf_name in ("llama", "exaone"):
        partial = _rope(config).get("partial_rotary_factor", 1.0)
        writer.add_rope_dimension_count(int(head_dim * partial))
    if "head_dim" in config or arch.gguf_name.startswith("gemma"):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    rope = _rope(config)
    if rope.get("rope_theta") is not None:
        writer.add_rope_freq_base(rope["rope_theta"])
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif kind not in ("default", "llama3"):
        raise ExportError(f"GGUF export: rope scaling '{kind}' is not written here (default, linear and Llama-3.1's are)")
    if arch.sliding_window and config.get("sliding_window"):
        writer.add_sliding_window(config["sliding_window"])
        local = _rope(config, "sliding_attention")
        if arch.gguf_name == "gemma3" and local.get("rope_theta") is not None:
            writer.add_rope_freq_base_swa(local["rope_theta"])
    if arch.softcapping:
        if config.get("attn_logit_softcapping") is not None:
            writer.add_attn_logit_softcapping(config["attn_logit_softcapping"])
        if config.get("final_logit_softcapping") is not None:
            writer.add_final_logit_softcapping(config["final_logit_softcapping"])
    elif arch.gguf_name == "gemma3" and config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(config["final_logit_softcapping"])
    writer.add_file_type(file_type)


# ----------------------------------------------------------------------------------------------------------------------
# Tensors
# ----------------------------------------------------------------------------------------------------------------------


def permute_qk(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers' rotary layout (first half, second half of each head) -> llama.cpp's (adjacent pairs)."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


@dataclass
class PlannedTensor:
    gguf_name: str
    shape: Tuple[int, ...]
    qtype: object  # gguf.GGMLQuantizationType
    load: Callable[[], np.ndarray]  # float32 data, converted for llama.cpp


def plan_tensors(folder: Path, config: dict, arch: Architecture, qtype) -> List[PlannedTensor]:
    """Every tensor of the folder's safetensors, named and typed for llama.cpp; the data is read when written."""
    import gguf
    from safetensors import safe_open

    from train.export.merge import weight_shards

    n_layers = config.get("num_hidden_layers") or config.get("num_layers")
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.gguf_name.upper()), n_layers)
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    tied = config.get("tie_word_embeddings", arch.gguf_name.startswith("gemma"))
    planned: List[PlannedTensor] = []
    unknown = []
    for file, keys in weight_shards(folder).items():
        with safe_open(folder / file, framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        for key in keys:
            if key.endswith("rotary_emb.inv_freq") or (key == "lm_head.weight" and tied):
                continue  # computed by llama.cpp / the tied output layer is the embedding
            name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if name is None:
                unknown.append(key)
                continue
            shape = shapes[key]
            one_d = len(shape) <= 1 or name.endswith("_norm.weight")
            tensor_type = gguf.GGMLQuantizationType.F32 if one_d else qtype
            block = gguf.GGML_QUANT_SIZES[tensor_type][0]
            if shape[-1] % block:  # rows that do not split into whole blocks stay f16 (as convert_hf_to_gguf does)
                tensor_type = gguf.GGMLQuantizationType.F16

            def load(file=file, key=key, name=name):
                with safe_open(folder / file, framework="pt") as f:
                    data = f.get_tensor(key).float()
                if arch.permute_qk and name.endswith("attn_q.weight"):
                    data = permute_qk(data, heads)
                elif arch.permute_qk and name.endswith("attn_k.weight"):
                    data = permute_qk(data, kv_heads)
                if arch.norm_plus_one and name.endswith("norm.weight"):
                    data = data + 1
                return data.numpy()

            planned.append(PlannedTensor(name, shape, tensor_type, load))
    if unknown:
        raise ExportError(f"GGUF export: {len(unknown)} tensor(s) of {folder} have no llama.cpp name for "
                          f"{arch.gguf_name}, e.g. {unknown[0]}: this checkpoint's layout is not the one llama.cpp "
                          f"converts")
    factors = llama3_rope_factors(config) if arch.gguf_name == "llama" else None
    if factors is not None:
        planned.append(PlannedTensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors.shape,
                                     gguf.GGMLQuantizationType.F32, lambda f=factors: f))
    return planned


# ----------------------------------------------------------------------------------------------------------------------
# The file
# ----------------------------------------------------------------------------------------------------------------------


def write_gguf(model_dir: str | Path, out_path: str | Path, quant: str = "q8_0", tokenizer=None,
               end_of_turn: Optional[str] = None, name: Optional[str] = None) -> Path:
    """model_dir (safetensors + config.json + tokenizer) -> one GGUF file at out_path, tensors of type `quant`."""
    import gguf
    from transformers import AutoTokenizer

    model_dir, out_path = Path(model_dir), Path(out_path)
    quant = quant.lower()
    if quant in LLAMA_QUANTIZE:
        return _llama_quantize(model_dir, out_path, quant, tokenizer, end_of_turn, name)
    if quant not in PYTHON_QUANTS:
        raise ExportError(f"--quant {quant}: choose one of {', '.join(PYTHON_QUANTS + LLAMA_QUANTIZE)}")
    config = json.loads((model_dir / "config.json").read_text())
    arch = exportable_architecture(config)
    qtype = getattr(gguf.GGMLQuantizationType, quant.upper())
    file_type = getattr(gguf.LlamaFileType, "ALL_F32" if quant == "f32" else f"MOSTLY_{quant.upper()}")
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_dir)
    tensors = plan_tensors(model_dir, config, arch, qtype)
    embedding = next(t for t in tensors if t.gguf_name == "token_embd.weight")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    writer = gguf.GGUFWriter(tmp, arch.gguf_name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or model_dir.name)
    add_hyperparameters(writer, config, arch, file_type)
    add_tokenizer(writer, tokenizer, embedding.shape[0], end_of_turn)
    if quant not in ("f32", "f16", "bf16"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for t in tensors:  # the table first: names, shapes (as bytes for packed types) and types
        if t.qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor_info(t.gguf_name, t.shape, np.dtype(np.float32), int(np.prod(t.shape)) * 4)
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(t.shape, t.qtype)
            writer.add_tensor_info(t.gguf_name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                                   raw_dtype=t.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in tensors:  # one tensor in memory at a time
        data = t.load().astype(np.float32)
        data = data if t.qtype == gguf.GGMLQuantizationType.F32 else gguf.quants.quantize(data, t.qtype)
        writer.write_tensor_data(data)
    writer.close()
    tmp.replace(out_path)
    return out_path


def gguf_file_name(name: str, quant: str) -> str:
    """The file `launch export` writes for a model `name` at `quant`."""
    return f"{name}-{quant.lower()}.gguf"


def _llama_quantize(model_dir: Path, out_path: Path, quant: str, tokenizer, end_of_turn, name) -> Path:
    """k-quants: an f16 GGUF first (a name of its own beside the output, removed afterwards), then llama.cpp's
    llama-quantize (when installed) writes the requested type. Its note on tensors that needed another type (rows not a
    multiple of 256 values) is passed on."""
    tool = shutil.which("llama-quantize")
    tool_quant = quant.upper()
    if tool is None:
        suffix = gguf_file_name("", quant)  # a file launch export names: --quant f16 writes its f16 sibling
        name = out_path.name[:-len(suffix)] if out_path.name.endswith(suffix) else out_path.stem
        f16 = out_path.with_name(gguf_file_name(name, "f16"))
        head, _, rest = quant.partition("_")
        raise ExportError(f"--quant {quant} is a k-quant, made by llama.cpp's `llama-quantize`, which is not installed "
                          f"here. Export f16 (--quant f16 writes {f16}), then run `llama-quantize {f16} {out_path} "
                          f"{tool_quant}`; or let Ollama quantise: `ollama create --quantize {head}_{rest.upper()} "
                          f"<name> -f Modelfile` with the f16 file in FROM; --quant q8_0 needs no tool")
    f16 = out_path.with_name(out_path.name + ".f16-for-llama-quantize")
    write_gguf(model_dir, f16, "f16", tokenizer, end_of_turn, name)
    done = subprocess.run([tool, str(f16), str(out_path), tool_quant], capture_output=True, text=True)
    if done.returncode != 0:
        raise ExportError(f"llama-quantize failed (exit {done.returncode}): {done.stderr.strip()[-500:]}. The f16 file "
                          f"is kept: retry with `{tool} {f16} {out_path} {tool_quant}`")
    f16.unlink()
    for line in (done.stdout + done.stderr).splitlines():
        if "fallback" in line:  # e.g. "180 of 272 tensor(s) required fallback quantization"
            print(f"llama-quantize: {line.strip()} (a tensor whose rows are not a multiple of 256 values gets "
                  f"another type, such as q5_0 or q8_0)", flush=True)
    return out_path


# ----------------------------------------------------------------------------------------------------------------------
# The command: python -m launch export --gguf
# ----------------------------------------------------------------------------------------------------------------------


def _base_config(cfg) -> Optional[dict]:
    """The recipe's base config.json (a local folder's, or the hub's: train/model_source.py's one-file fetch), or None
    where it cannot be read now (the merge then says why)."""
    from train.model_source import hub_config_file

    folder = Path(cfg.model.name_or_path)
    file = folder / "config.json" if folder.is_dir() else hub_config_file(cfg.model.name_or_path, cfg.model.revision)
    return json.loads(file.read_text()) if file is not None and file.is_file() else None


def export_run(cfg, model_dir: Optional[str | Path] = None, quant: str = "q8_0",
               out_dir: Optional[str | Path] = None) -> Tuple[Path, Path]:
    """GGUF + Ollama Modelfile of a run into out_dir (default output_dir/gguf). The model: model_dir, else the merged
    model in output_dir/merged (merged first, streamed, when it is not there yet), else output_dir for full weights."""
    from transformers import AutoTokenizer

    from train.data.templates import TemplateError, template_layout
    from train.export.ollama import write_modelfile
    from train.methods import method_of

    run_dir = Path(cfg.output_dir)
    if model_dir is None:
        if method_of(cfg).adapter:
            model_dir = run_dir / "merged"
            if not (model_dir / "config.json").is_file():
                from train.export.merge import merge_run

                base_config = _base_config(cfg)
                if base_config:  # a model llama.cpp would not read the same way is refused before a long merge
                    exportable_architecture(base_config)
                print(f"no merged model in {model_dir} yet: merging the adapter of {run_dir} first", flush=True)
                merge_run(cfg)
        else:
            model_dir = run_dir
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"{model_dir} holds no model (config.json): pass --model with a merged or full model folder")
    out_dir = Path(out_dir or run_dir / "gguf")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    try:
        end_of_turn = template_layout(tokenizer, cfg.data).end_of_turn
    except TemplateError:
        end_of_turn = None
    path = write_gguf(model_dir, out_dir / gguf_file_name(run_dir.name, quant), quant, tokenizer, end_of_turn,
                      name=run_dir.name)
    generation_file = model_dir / "generation_config.json"
    generation = json.loads(generation_file.read_text()) if generation_file.is_file() else None
    modelfile = write_modelfile(out_dir, path, cfg, tokenizer, cfg.data.template, end_of_turn, generation)
    return path, modelfile
