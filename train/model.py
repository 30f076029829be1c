"""The model side of a run: tokenizer, base model (full precision or 4-bit), LoRA adapters, added tokens. Merging an
adapter into its base is train/export/merge.py (streamed, shard by shard).

Weights load from safetensors only. `trust_remote_code` stays off unless the recipe turns it on.
"""

from __future__ import annotations

from typing import Optional

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel

from train.config import Config, resolved_quant_storage
from train.methods import method_of
from train.kernels.lean_lora import lean_lora_layers
from train.kernels.recompute import recompute_activations

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(cfg: Config):
    name = cfg.model.tokenizer_name_or_path or cfg.model.name_or_path
    return AutoTokenizer.from_pretrained(name, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code)


def quantization_config(cfg: Config) -> Optional[BitsAndBytesConfig]:
    if not method_of(cfg).quantized_base:
        return None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.qlora.quant_type,
        bnb_4bit_use_double_quant=cfg.qlora.double_quant,
        bnb_4bit_compute_dtype=DTYPES[cfg.qlora.compute_dtype],
        bnb_4bit_quant_storage=DTYPES.get(resolved_quant_storage(cfg), torch.uint8),
    )


def load_base_model(cfg: Config, device_map=None) -> PreTrainedModel:
    from transformers.integrations import is_deepspeed_zero3_enabled, is_fsdp_enabled

    quant = quantization_config(cfg)
    sharded = is_deepspeed_zero3_enabled() or is_fsdp_enabled()
    if quant is not None and device_map is None and not sharded:
        # bitsandbytes quantises while loading onto the device; one device per process (DDP) or the CPU. Under
        # ZeRO-3 / FSDP no device_map: they place and shard the (float-stored) 4-bit weights themselves.
        device_map = {"": torch.cuda.current_device()} if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        cfg.model.name_or_path,
        revision=cfg.model.revision,
        dtype=DTYPES[cfg.model.dtype],
        attn_implementation=cfg.model.attn_implementation,
        trust_remote_code=cfg.model.trust_remote_code,
        use_safetensors=True,
        quantization_config=quant,
        device_map=device_map,
    )
    if quant is not None:
        # On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weights on its first inference call (eval
        # mode, no gradient) and from then on computes that layer in bf16, in training too: an evaluation during
        # training would silently change the training's numerics. Keep every call on the compute dtype.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    return model


def resize_for_tokenizer(model: PreTrainedModel, tokenizer) -> int:
    """Grow the embeddings for added tokens; new rows start at the mean of the old ones. Returns rows added."""
    weight = model.get_input_embeddings().weight
    old = weight.ds_shape[0] if hasattr(weight, "ds_shape") else weight.shape[0]  # ZeRO-3: the local shape is empty
    if len(tokenizer) <= old:
        return 0
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return len(tokenizer) - old


def apply_lora(model: PreTrainedModel, cfg: Config) -> PreTrainedModel:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method_of(cfg).quantized_base:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    targets = cfg.lora.target_modules
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules="all-linear" if list(targets) == ["all-linear"] else list(targets),
        bias=cfg.lora.bias,
        modules_to_save=list(cfg.lora.modules_to_save) or None,
        task_type="CAUSAL_LM",
        **method_of(cfg).lora_options,
    )
    model = get_peft_model(model, lora)
    lean_lora_layers(model)
    if cfg.train.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def load_model(cfg: Config, tokenizer) -> PreTrainedModel:
    """Base model + added tokens + (for lora/qlora) adapters, ready for the Trainer."""
    model = load_base_model(cfg)
    resize_for_tokenizer(model, tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False  # no KV cache while training; generation turns it back on
    select_attention(model, cfg)
    if not cfg.train.gradient_checkpointing:  # with checkpointing a layer keeps none of its MLP's activations anyway
        recompute_activations(model)  # gated MLPs and RMSNorms: recomputed in backward, not kept (train/kernels/recompute.py)
    if method_of(cfg).adapter:
        model = apply_lora(model, cfg)
    return model


def select_attention(model: PreTrainedModel, cfg: Config) -> str:
    """Packed rows with SDPA train with attention per sample (train/kernels/attention.py: per-sample SDPA on a CPU; on a GPU
    FlashAttention when installed, else PyTorch's varlen kernel); every other case keeps `model.attn_implementation`.
    Returns the implementation in use."""
    from train.kernels.packed_attention import choose_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = choose_attention(cfg.model.attn_implementation, cfg.data.packing, device, model.config, cfg.model.dtype)
    if chosen != model.config._attn_implementation:
        model.set_attn_implementation(chosen)
    return model.config._attn_implementation


def parameter_numel(p: torch.Tensor) -> int:
    """The number of weights a parameter stands for: a 4-bit bitsandbytes weight (Params4bit) stores two weights per
    byte, in a tensor of its storage dtype (uint8: n/2 elements; bf16 storage for ZeRO-3/FSDP: n/4), so its own
    numel() undercounts; its quant_state keeps the original shape. Under ZeRO-3 a partitioned parameter's full size
    is ds_numel."""
    if hasattr(p, "ds_numel"):
        return int(p.ds_numel)
    state = getattr(p, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:
        return int(torch.Size(state.shape).numel())
    return p.numel()


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, 4-bit weights counted unpacked (what the model has, not what storage holds)."""
    total = trainable = 0
    for p in model.parameters():
        n = parameter_numel(p)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def local_parameter_count(model: torch.nn.Module) -> int:
    """Parameter elements this process holds: all of them, or under ZeRO-3 its partition (`ds_tensor`)."""
    return sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else parameter_numel(p) for p in model.parameters())

