"""A tiny, real causal LM saved to a folder like a hub checkpoint: a byte-level BPE tokenizer trained here on Korean
and English text (small vocabulary, ChatML template, distinct pad and end-of-turn tokens) and a 2-layer Llama or
Qwen3 with random weights. Training tests point `model.name_or_path` at the folder, so the real loading code runs."""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CORPUS = [
    "진통과 해열 효과가 있는 파스형 의약품은 임산부와 노인에게 적합합니다.",
    "삼성전자가 새로운 반도체 공장을 짓는다는 소식에 주가가 올랐습니다.",
    "다음 문장에서 의약품 키워드를 추출하세요.",
    "한국의 수도는 서울이며 인구는 약 천만 명입니다.",
    "당신은 금융 뉴스 판별기입니다. 답변은 JSON 형식으로 작성하십시오.",
    '{"is_stock_related": true, "positive_impact_stocks": ["삼성전자"], "negative_impact_stocks": []}',
    '["진통", "해열", "파스", "임산부", "노인"]',
    "The cat is on the mat. Hello world, this is a tiny test corpus for a tokenizer.",
]


CONVERSATIONS = [
    ("다음 문장에서 의약품 키워드를 추출하세요.\n\n진통과 해열 효과가 있는 파스형 의약품입니다.", '["진통", "해열", "파스"]'),
    ("한국의 수도는 어디인가요?", "한국의 수도는 서울입니다."),
    ("삼성전자가 새 반도체 공장을 짓습니다. 관련 종목은?", '{"is_stock_related": true, "positive_impact_stocks": ["삼성전자"]}'),
    ("The cat is on the mat. Repeat it.", "The cat is on the mat."),
]


def write_conversations(path: str | Path, n: int = 32) -> Path:
    """n short Korean/English `messages` records, distinct (numbered system prompts) so dedup keeps them all."""
    import json

    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            user, answer = CONVERSATIONS[i % len(CONVERSATIONS)]
            messages = [{"role": "system", "content": f"당신은 도우미 {i}번입니다."},
                        {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return Path(path)


def build_tokenizer(vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHATML)


def build_tiny_model_dir(path: str | Path, arch: str = "llama", seed: int = 0, hidden: int = 64) -> Path:
    """Write tokenizer + randomly initialised model (fp32 safetensors) to `path`; returns the path."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    path = Path(path)
    if (path / "config.json").exists():
        return path
    tokenizer = build_tokenizer()
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=None)
    config = LlamaConfig(**common) if arch == "llama" else Qwen3Config(head_dim=hidden // 4, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def write_tiny_recipe(folder: str | Path, model_dir: str | Path, **train) -> Path:
    """folder/recipe.yaml: LoRA r=4 on the tiny model, 32 conversations (folder/train.jsonl), fp32, constant LR,
    a data cache in folder/cache and output_dir folder/out; `train` overrides the train section."""
    import yaml

    folder = Path(folder)
    data = write_conversations(folder / "train.jsonl")
    cfg = {
        "model": {"name_or_path": str(model_dir), "dtype": "float32"},
        "method": "lora",
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "qlora": {"compute_dtype": "float32"},
        "data": {"sources": [{"path": str(data), "format": "messages"}], "max_length": 128, "validation_split": 0.0,
                 "cache_dir": str(folder / "cache")},
        "train": {"max_steps": 4, "learning_rate": 5e-3, "per_device_batch_size": 2, "logging_steps": 1,
                  "save_steps": 100, "warmup_ratio": 0.0, "lr_scheduler": "constant", **train},
        "output_dir": str(folder / "out"),
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path
