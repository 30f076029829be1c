"""Test fixtures for the tiny model of launch/assets.py (`tiny_model_dir`: a byte-level BPE tokenizer trained on Korean
and English text and a 2-layer Llama or Qwen3 with random weights, saved like a hub checkpoint): short conversations
and a recipe that trains on them. Training tests point `model.name_or_path` at the model folder, so the real loading code runs."""

from __future__ import annotations

from pathlib import Path

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
