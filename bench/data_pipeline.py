"""Data-preparation benchmark: this project's `prepare` stage against TRL's SFTTrainer dataset preparation.

    python bench/data_pipeline.py                 # 20,000 samples, max_length 2048 and 4096, both sides
    python bench/data_pipeline.py --quick         # 500 samples (the test in tests/test_bench_data.py runs this)
    python bench/data_pipeline.py --no-trl        # our side only (also what happens when trl is not installed)
    python bench/data_pipeline.py --repeat 3      # the BENCHMARKS.md run: medians of 3 runs per measurement

What it does, in one run, with one tokenizer (the real Qwen3 tokenizer from `launch.assets.qwen3_tokenizer()`, its
chat template set to the official Qwen3 template on both sides):
1. Writes a deterministic Korean chat corpus (OpenAI `messages` JSONL) shaped like the users' seeds: short keyword
   extraction samples (seed 001), long system prompts with finance news (seed 002), RAFT samples with several passages
   and distractors (seed 003), multi-turn M&A QA with a system prompt (seed 004), and short chit-chat from the
   `chatterbot_corpus` Korean data. Lengths run from a few tokens to several thousand (long-tailed).
2. For each max_length, each measurement in a fresh subprocess (so its peak memory is its own), `--repeat` times with
   the sides interleaved; the table gives the median wall and CPU seconds (CPU time is less disturbed by other
   processes on a shared machine):
   - ours: `train.data.prepare.load_or_build` on the JSONL file, i.e. everything `python -m launch prepare` does
     between loading the tokenizer and writing the reports: read + validate the JSONL, dedup, template, assistant-only
     labels, overlong split, BFD packing, and writing the Arrow dataset to its cache folder. (Reports/PNG: not timed.)
   - TRL: `SFTTrainer._prepare_dataset` (what `SFTTrainer(...)` runs on the train set) with `assistant_only_loss=True`,
     `packing=True`, its default `packing_strategy="bfd"` (and `bfd_split` as a second row) on the same records,
     already loaded as a `datasets.Dataset` (loading the JSONL and building the trainer around a tiny model are not
     timed; that favours TRL).
3. Counts, outside the timed part: input tokens and label tokens of every sample before packing (one untimed
   tokenisation per side), tokens and label tokens in the packed rows, so "lost" = input that reaches no row.

Results: a markdown table on stdout and a JSON file (default bench/results/data_pipeline.json).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
SEED = 20261121
IGNORE = -100

# ----------------------------------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------------------------------

DRUG_WORDS = ["진통", "해열", "소염", "파스", "임산부", "노인", "타이레놀", "신신제약", "정제", "캡슐", "시럽", "연고",
              "항생제", "소화제", "두통", "근육통", "관절통", "감기", "비염", "알레르기", "위염", "변비", "당뇨", "고혈압",
              "인슐린", "아스피린", "이부프로펜", "아세트아미노펜", "유한양행", "종근당", "한미약품", "대웅제약", "동아제약",
              "녹십자", "어린이", "청소년", "수유부", "간장애", "신장애", "복용량", "부작용", "졸음", "멀미", "붕대",
              "소독약", "안약", "점비제", "흡입제", "패치", "좌약", "주사제", "비타민", "철분제", "유산균", "한방"]
DRUG_SENTENCES = ["{a} 효과가 있는 {b}형 의약품은 {c}에게 적합합니다.", "{a}와 {b} 작용이 있는 {c} 제품은 {d}이 제조했습니다.",
                  "{a} 환자는 {b}을 복용하기 전에 {c} 여부를 의사와 상의해야 합니다.",
                  "{a}에는 {b}보다 {c}이 더 자주 처방됩니다.", "{a} 증상이 심한 {b}는 {c} 대신 {d}을 사용하는 것이 좋습니다.",
                  "{a}을 장기간 복용하면 {b}과 {c} 같은 부작용이 나타날 수 있습니다.",
                  "{d}의 신제품 {a} {b}는 {c} 완화에 쓰입니다."]
COMPANIES = ["삼성전자", "SK하이닉스", "현대자동차", "LG에너지솔루션", "카카오", "네이버", "셀트리온", "포스코홀딩스", "기아",
             "KB금융", "신한지주", "한화에어로스페이스", "삼성바이오로직스", "LG화학", "삼성SDI", "HD현대중공업", "크래프톤",
             "엔씨소프트", "하이브", "CJ제일제당", "아모레퍼시픽", "대한항공", "한국전력", "KT", "SK텔레콤", "롯데케미칼",
             "두산에너빌리티", "에코프로비엠", "고려아연", "한미반도체"]
FIN_METRICS = ["영업이익", "매출", "순이익", "수주 잔고", "영업이익률", "현금흐름", "부채비율", "배당금", "연구개발비", "시가총액"]
FIN_SENTENCES = [
    "{c}은 {q} {m}이 전년 동기 대비 {p}% {d}했다고 {day}일 공시했다.",
    "증권가에서는 {c}의 {m} 전망치를 {p}% {d} 조정했으며 목표주가도 함께 변경했다.",
    "{c}과 {c2}는 차세대 {t} 분야에서 {n}억 원 규모의 공동 투자 계약을 체결했다.",
    "업계 관계자는 {c}의 이번 결정이 {t} 시장의 경쟁 구도를 바꿀 수 있다고 평가했다.",
    "{c} 주가는 장 초반 {p}% {d}한 뒤 오후 들어 {c2}와 함께 보합권에서 거래됐다.",
    "금융당국은 {c}에 대해 {t} 관련 공시 위반 여부를 조사하고 있다고 {day}일 밝혔다.",
    "{c}는 {n}억 원 규모의 자사주를 매입해 소각하겠다고 발표했다.",
    "전문가들은 금리 인하 기대감과 {t} 수요 회복이 {c}의 {m} 개선으로 이어질 것이라고 내다봤다.",
    "{c2}의 {t} 사업부 매각 소식에 {c}가 인수 후보로 거론되고 있다.",
    "{q} 실적 발표를 앞두고 외국인 투자자는 {c} 주식을 {n}억 원어치 순매수했다.",
]
TOPICS = ["반도체", "이차전지", "전기차", "바이오시밀러", "인공지능", "클라우드", "조선", "방산", "게임", "콘텐츠", "화장품",
          "항공", "통신", "석유화학", "원자력", "로봇", "자율주행", "핀테크"]
QUARTERS = ["1분기", "2분기", "3분기", "4분기", "상반기", "하반기", "올해", "지난해"]
PLACES = ["서울", "부산", "인천", "대구", "광주", "대전", "울산", "세종", "수원", "창원", "제주", "전주", "청주", "포항"]
FACTS = ["{x}의 인구는 약 {n}만 명이며 {y}년에 광역시로 승격되었다.", "{x}에는 {n}개의 대학교와 {m}개의 공공도서관이 있다.",
         "{x}의 대표 산업은 {t}이며 지역 총생산의 {p}%를 차지한다.", "{x}에서는 매년 {y}년부터 시작된 {t} 축제가 열린다.",
         "{x}와 {x2} 사이에는 하루 {n}편의 고속열차가 운행된다.", "{x}의 평균 기온은 {m}도이고 연간 강수량은 {n}밀리미터이다.",
         "{x} 시청은 {y}년에 {t} 산업 단지를 조성하겠다는 계획을 발표했다.",
         "{x} 지역의 {t} 기업 수는 최근 {m}년 동안 {p}% 늘었다."]
MA_TERMS = ["실사", "기업가치 평가", "주식매수청구권", "합병비율", "영업양수도", "공개매수", "지분 인수", "경영권 프리미엄",
            "우발부채", "진술 및 보장", "에스크로", "적대적 인수", "포이즌 필", "분할합병", "물적분할", "인적분할", "LBO",
            "사모펀드", "주주총회 특별결의", "공정거래위원회 기업결합 신고"]
MA_QUESTIONS = ["{a}이란 무엇인가요?", "{a}와 {b}의 차이를 설명해 주세요.", "{a} 절차에서 가장 주의할 점은 무엇인가요?",
                "{c}가 {a}을 진행한다면 {b}은 어떻게 처리되나요?", "{a}의 법적 요건을 알려주세요.",
                "{a}을 할 때 {b} 조항은 왜 필요한가요?"]
MA_ANSWERS = ["{a}은 인수합병 과정에서 {b}와 밀접하게 연결된 개념입니다.", "일반적으로 {a} 단계에서는 {b} 검토가 먼저 이루어집니다.",
              "상법에 따르면 {a}에는 {b} 절차가 필요하며, 이를 지키지 않으면 무효가 될 수 있습니다.",
              "실무에서는 {a}의 위험을 줄이기 위해 {b} 조항을 계약서에 포함합니다.",
              "{c}의 사례를 보면 {a} 이후 {b}로 인한 분쟁이 발생하기도 했습니다.",
              "따라서 {a}을 계획할 때는 재무, 법률, 세무 자문을 함께 받는 것이 좋습니다.",
              "{a}의 기간은 보통 {n}주에서 {m}주 정도 걸리며, {b} 결과에 따라 달라집니다."]

FINANCE_SYSTEM = (
    "당신은 주어진 뉴스로부터 종목에 영향을 주는 뉴스인지 판별하는 금융 뉴스 판별기입니다.\n"
    "두 가지 답변 케이스가 존재하며 무조건 파이썬의 dictionary 형식으로 작성하십시오.\n"
    "큰 따옴표 사이에 다른 따옴표들을 적으려고 시도하지 마십시오. 이는 dictionary 파싱을 실패하게 하는 원인이 됩니다.\n"
    "아래 dictionary에서 각 value는 지시사항에 해당합니다. 해당 지시사항에 따라 적절한 value를 채워넣으십시오.\n"
    "해당사항이 없다면 빈 문자열 또는 빈 리스트로 적어야 합니다. 임의로 '없음' 등을 적어서는 안 됩니다.\n\n"
    "만약 해당 뉴스가 특정 종목(회사)이 언급되지 않거나, 특정 종목(회사)와 아무런 연관이 없는 뉴스일 경우에는 아래와 같이 "
    "작성합니다.\n\n답변:\n{\"is_stock_related\": False,\n\"summary\": \"여기에는 해당 뉴스를 요약해서 요약문을 작성하십시오\"}\n\n"
    "만약 해당 뉴스가 특정 종목(회사)들과 연관되었을 경우에는 아래와 같이 작성합니다.\n\n답변:\n"
    "{\"is_stock_related\": True,\n\"positive_impact_stocks\": [\"이 뉴스가 긍정적인 영향을 줄 것으로 추정되는 종목들의 "
    "이름을 작성하십시오. 약자로 적거나 별명으로 적지 마십시오. 뉴스로부터 추정할 수 있는 정확한 풀네임으로 적으십시오.\"],\n"
    "\"reason_for_positive_impact\": \"위의 종목들이 긍정적인 영향을 받을 것으로 추정한 이유를 작성하십시오\",\n"
    "\"positive_keywords\": [\"긍정적인 영향을 주는 근거가 된 키워드들을 작성하십시오\"],\n"
    "\"negative_impact_stocks\": [\"이 뉴스가 부정적인 영향을 줄 것으로 추정되는 종목들의 이름을 작성하십시오.\"],\n"
    "\"reason_for_negative_impact\": \"위의 종목들이 부정적인 영향을 받을 것으로 추정한 이유를 작성하십시오\",\n"
    "\"negative_keywords\": [\"부정적인 영향을 주는 근거가 된 키워드들을 작성하십시오\"],\n"
    "\"summary\": \"여기에는 해당 뉴스를 요약해서 요약문을 작성하십시오\"}\n"
)
RAFT_INSTRUCTION = ("다음 문맥을 읽고 질문에 답하세요. 여러 문맥이 주어질 수 있으며, 그 중 질문에 답하기 위한 가장 적절한 "
                    "정보를 찾아 활용해야 합니다. 답변 전에 근거를 ##Reason: 아래에 쓰고, 최종 답을 ##Answer: 아래에 쓰세요.")
MA_SYSTEM = ("당신은 M&A(인수합병), 금융, 법률 분야의 전문 AI 어시스턴트입니다. 사용자의 질문에 한국어로 정확하고 "
             "근거 있게 답변하세요. 모르는 내용은 추측하지 말고 모른다고 답하세요.")


def _has_batchim(word: str) -> bool:
    ch = word[-1]
    return "가" <= ch <= "힣" and (ord(ch) - 0xAC00) % 28 != 0


def _fix_particles(text: str) -> str:
    """Choose 은/는, 이/가, 을/를, 과/와 after template slots by the preceding syllable (a readable corpus)."""
    pairs = {"은": "는", "이": "가", "을": "를", "과": "와"}
    out = []
    for i, ch in enumerate(text):
        prev = out[-1] if out else ""
        if ch in pairs and i + 1 < len(text) and text[i + 1] in " ,." and prev and "가" <= prev <= "힣":
            ch = ch if _has_batchim(prev) else pairs[ch]
        out.append(ch)
    return "".join(out)


def _chatterbot_conversations() -> List[List[str]]:
    import yaml
    from chatterbot_corpus.corpus import DATA_DIRECTORY

    folder = Path(DATA_DIRECTORY) / "korean"
    convs = []
    for path in sorted(folder.glob("*.yml")):
        for conv in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []:
            turns = [str(t) for t in conv if t is not None and str(t).strip()]
            if len(turns) >= 2:
                convs.append(turns)
    return convs


class _Writer:
    """Random Korean text from the word lists above (one seeded random.Random: the corpus is deterministic)."""

    def __init__(self, rng: random.Random):
        self.r = rng

    def count(self, median: float, sigma: float, low: int, high: int) -> int:
        """A long-tailed (log-normal) count, clipped to [low, high]."""
        return max(low, min(high, int(round(self.r.lognormvariate(0, sigma) * median))))

    def drug_sentence(self) -> str:
        w = self.r.sample(DRUG_WORDS, 4)
        return _fix_particles(self.r.choice(DRUG_SENTENCES).format(a=w[0], b=w[1], c=w[2], d=w[3]))

    def news_sentence(self) -> str:
        c, c2 = self.r.sample(COMPANIES, 2)
        return _fix_particles(self.r.choice(FIN_SENTENCES).format(
            c=c, c2=c2, q=self.r.choice(QUARTERS), m=self.r.choice(FIN_METRICS), p=self.r.randint(1, 80),
            d=self.r.choice(["증가", "감소", "상향", "하향"]), day=self.r.randint(1, 28), t=self.r.choice(TOPICS),
            n=self.r.randint(10, 9000)))

    def fact(self, place: str) -> str:
        return _fix_particles(self.r.choice(FACTS).format(
            x=place, x2=self.r.choice(PLACES), n=self.r.randint(2, 990), m=self.r.randint(2, 60),
            y=self.r.randint(1950, 2025), t=self.r.choice(TOPICS), p=self.r.randint(1, 70)))

    def ma_sentence(self, pool: List[str]) -> str:
        a, b = self.r.sample(MA_TERMS, 2)
        return _fix_particles(self.r.choice(pool).format(a=a, b=b, c=self.r.choice(COMPANIES), n=self.r.randint(2, 8),
                                                         m=self.r.randint(9, 30)))


def _keyword_sample(w: _Writer) -> dict:  # seed 001: alpaca-style keyword extraction, list output rendered as JSON
    sentences = [w.drug_sentence() for _ in range(w.count(1.5, 0.6, 1, 8))]
    text = " ".join(sentences)
    keywords = [k for k in DRUG_WORDS if k in text][:12]
    return {"messages": [
        {"role": "user", "content": f"다음 문장에서 의약품 키워드를 추출하세요.\n\n{text}"},
        {"role": "assistant", "content": json.dumps(keywords, ensure_ascii=False)}]}


def _finance_sample(w: _Writer) -> dict:  # seed 002: long fixed system prompt, news article, dict answer
    news = " ".join(w.news_sentence() for _ in range(w.count(12, 0.8, 2, 140)))
    mentioned = [c for c in COMPANIES if c in news]
    pos, neg = mentioned[: len(mentioned) // 2], mentioned[len(mentioned) // 2:]
    answer = {"is_stock_related": bool(mentioned), "positive_impact_stocks": pos,
              "reason_for_positive_impact": w.news_sentence() if pos else "",
              "positive_keywords": w.r.sample(TOPICS, 2),
              "negative_impact_stocks": neg, "reason_for_negative_impact": w.news_sentence() if neg else "",
              "negative_keywords": w.r.sample(FIN_METRICS, 2), "summary": w.news_sentence()}
    return {"messages": [
        {"role": "system", "content": FINANCE_SYSTEM},
        {"role": "user", "content": f"뉴스: {news}"},
        {"role": "assistant", "content": str(answer)}]}


def _raft_sample(w: _Writer) -> dict:  # seed 003: instruction, passages with distractors, question, cot + answer
    places = w.r.sample(PLACES, w.count(4, 0.5, 2, 12))
    passages = [" ".join(w.fact(p) for _ in range(w.count(9, 0.7, 2, 60))) for p in places]
    oracle = w.r.randrange(len(passages))
    question = f"{places[oracle]}에 대해 문맥에서 알 수 있는 사실 한 가지를 말해 주세요."
    context = "\n\n".join(f"[문서 {i + 1}]\n{p}" for i, p in enumerate(passages))
    answer = passages[oracle].split(". ")[0].rstrip(".") + "."
    reason = (f"질문은 {places[oracle]}에 관한 것입니다. 문서 {oracle + 1}이 {places[oracle]}을 다루고, 나머지 문서는 "
              f"다른 지역에 관한 내용이므로 무시합니다. ") + " ".join(w.fact(places[oracle]) for _ in range(w.count(2, 0.5, 1, 6)))
    return {"messages": [
        {"role": "system", "content": RAFT_INSTRUCTION},
        {"role": "user", "content": f"{context}\n\n질문: {question}"},
        {"role": "assistant", "content": f"##Reason: {_fix_particles(reason)}\n##Answer: {answer}"}]}


def _ma_sample(w: _Writer, chit_chat: List[List[str]]) -> dict:  # seed 004: system prompt, multi-turn QA (no think)
    messages = [{"role": "system", "content": MA_SYSTEM}]
    for turn in range(w.count(1.6, 0.6, 1, 6)):
        if w.r.random() < 0.25:
            conv = w.r.choice(chit_chat)
            messages += [{"role": "user", "content": conv[0]}, {"role": "assistant", "content": conv[1]}]
            continue
        answer = " ".join(w.ma_sentence(MA_ANSWERS) for _ in range(w.count(4, 0.7, 1, 40)))
        messages += [{"role": "user", "content": w.ma_sentence(MA_QUESTIONS)}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def _chit_chat_sample(w: _Writer, chit_chat: List[List[str]]) -> dict:  # the shortest samples: a few tokens
    conv = w.r.choice(chit_chat)
    messages = []
    for i, text in enumerate(conv[: 2 * (len(conv) // 2)]):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return {"messages": messages}


MIX = [("keyword", 0.42), ("finance", 0.18), ("raft", 0.12), ("ma_qa", 0.23), ("chit_chat", 0.05)]


def make_corpus(n: int, seed: int = SEED) -> List[dict]:
    """`n` distinct conversations (deterministic for a seed), mixed as in MIX; each record has 'messages' and 'kind'."""
    rng = random.Random(seed)
    w = _Writer(rng)
    chit_chat = _chatterbot_conversations()
    kinds = [k for k, _ in MIX]
    weights = [p for _, p in MIX]
    seen, out = set(), []
    while len(out) < n:
        kind = rng.choices(kinds, weights)[0]
        if kind == "keyword":
            rec = _keyword_sample(w)
        elif kind == "finance":
            rec = _finance_sample(w)
        elif kind == "raft":
            rec = _raft_sample(w)
        elif kind == "ma_qa":
            rec = _ma_sample(w, chit_chat)
        else:
            rec = _chit_chat_sample(w, chit_chat)
        key = json.dumps(rec["messages"], ensure_ascii=False)
        if key in seen:  # exact duplicates would be removed by our dedup and kept by TRL: keep the inputs identical
            continue
        seen.add(key)
        rec["kind"] = kind
        out.append(rec)
    return out


def write_corpus(path: Path, n: int, seed: int = SEED, kinds: Optional[List[str]] = None) -> Dict[str, int]:
    """Write `n` records of the corpus (only those of `kinds`, if given) as JSONL ({'messages'} per line); returns the
    number of records per kind."""
    records = make_corpus(n, seed) if kinds is None else \
        [r for r in make_corpus(4 * n, seed) if r["kind"] in kinds][:n]
    counts: Dict[str, int] = {}
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            counts[rec["kind"]] = counts.get(rec["kind"], 0) + 1
            f.write(json.dumps({"messages": rec["messages"]}, ensure_ascii=False) + "\n")
    return counts


# ----------------------------------------------------------------------------------------------------------------------
# Measurements. Each runs in its own subprocess (`--child`), so peak memory (VmHWM) belongs to that measurement alone.
# ----------------------------------------------------------------------------------------------------------------------


def _memory_kb(field: str) -> int:
    """VmRSS / VmHWM of this process in KiB (Linux); ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _cpu_seconds() -> float:
    """CPU time (user + system, all threads) of this process: unlike wall time, not inflated by other processes
    competing for the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _qwen3_tokenizer():
    """The real Qwen3 tokenizer with the official Qwen3 chat template (the one TRL recognises and patches)."""
    from transformers import AutoTokenizer

    from launch.assets import qwen3_tokenizer
    from train.data.templates import QWEN3

    tok = AutoTokenizer.from_pretrained(str(qwen3_tokenizer()))
    own_template = tok.chat_template
    tok.chat_template = QWEN3
    return tok, own_template


def _row_counts(dataset) -> Dict[str, int]:
    """rows, tokens and label tokens (labels != -100) of a prepared dataset, counted with pyarrow."""
    import pyarrow.compute as pc

    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    ids, labels = table.column("input_ids"), table.column("labels")
    tokens = int(pc.sum(pc.list_value_length(ids)).as_py() or 0)
    flat = pc.list_flatten(labels)
    label_tokens = int(pc.sum(pc.not_equal(flat, IGNORE).cast("int64")).as_py() or 0)
    return {"rows": len(dataset), "tokens": tokens, "label_tokens": label_tokens}


def _our_config(corpus: Path, max_length: int, work: Path, num_proc: int, overlong: str = "split"):
    import yaml

    from launch.assets import qwen3_tokenizer
    from train.config import load_config

    recipe = {"model": {"name_or_path": str(qwen3_tokenizer())},
              "data": {"sources": [{"path": str(corpus), "format": "messages"}], "max_length": max_length,
                       "packing": True, "overlong": overlong, "template": "qwen3", "enable_thinking": False,
                       "validation_split": 0.0, "dedup": "exact", "cache_dir": str(work / "cache"),
                       "num_proc": num_proc},
              "output_dir": str(work / "out")}
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return load_config(path)


def measure_ours(corpus: Path, max_length: int, work: Path, num_proc: int = 1, profile: str = "",
                 overlong: str = "split") -> Dict[str, Any]:
    """Time `load_or_build` (the whole prepare stage; the cache folder is fresh) and count what reached the rows."""
    from train.data.prepare import load_or_build
    from train.data.templates import setup_tokenizer
    from train.model import load_tokenizer

    cfg = _our_config(corpus, max_length, work, num_proc, overlong)
    tokenizer = load_tokenizer(cfg)
    setup_tokenizer(tokenizer, cfg.data)
    rss_before = _memory_kb("VmRSS")
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu, start = _cpu_seconds(), time.perf_counter()
    prepared = load_or_build(cfg, tokenizer)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    peak = _memory_kb("VmHWM")
    report = prepared.report
    return {"side": "ours" if overlong == "split" else f"ours-{overlong}", "overlong": overlong, "seconds": seconds, "cpu_seconds": cpu, "rss_before_kb": rss_before, "peak_rss_kb": peak,
            "samples": report["token_lengths"]["count"], **_row_counts(prepared.train),
            "reported": {"overlong": report["overlong"], "packing": report["packing"],
                         "duplicates": report["duplicates"], "rejects": report["rejects"]["total"]}}


def label_less_windows(labels: List[int], max_length: int) -> Dict[str, int]:
    """What splitting one sample into max_length windows must lose, derived here from the rule as documented (not from
    the project's code): windows [start, stop) of at most max_length tokens, each after the first starting on the
    previous window's last token (whose label it masks). A window with no label left trains nothing and is dropped:
    its new tokens are lost. Returns {'lost': tokens in such windows, 'overlap': repeated tokens in kept windows,
    'overlap_all': repeated tokens when every window is kept (data.overlong=split_all)}."""
    n, lost, overlap, overlap_all, start = len(labels), 0, 0, 0, 0
    if n <= max_length:
        return {"lost": 0, "overlap": 0, "overlap_all": 0}
    while True:
        stop = min(start + max_length, n)
        new = stop - start - (1 if start else 0)
        overlap_all += 1 if start else 0
        if any(x != IGNORE for x in labels[start + 1:stop]):
            overlap += 1 if start else 0
        else:
            lost += new
        if stop == n:
            return {"lost": lost, "overlap": overlap, "overlap_all": overlap_all}
        start = stop - 1


def count_ours_inputs(corpus: Path, work: Path, max_lengths: List[int]) -> Dict[str, Any]:
    """Tokens and label tokens of every sample before packing, by our template + labels (untimed), and, per
    max_length, what data.overlong=split must lose by `label_less_windows`."""
    from train.data.labels import tokenize_conversation
    from train.data.templates import setup_tokenizer
    from train.model import load_tokenizer

    cfg = _our_config(corpus, max(max_lengths), work, 1)
    tokenizer = load_tokenizer(cfg)
    setup_tokenizer(tokenizer, cfg.data)
    lengths, label_tokens = [], 0
    split = {str(m): {"lost": 0, "overlap": 0, "overlap_all": 0} for m in max_lengths}
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            out = tokenize_conversation(tokenizer, json.loads(line)["messages"], cfg.data)
            lengths.append(len(out["input_ids"]))
            label_tokens += sum(1 for x in out["labels"] if x != IGNORE)
            for m in max_lengths:
                if len(out["labels"]) > m:
                    for key, value in label_less_windows(out["labels"], m).items():
                        split[str(m)][key] += value
    return {"side": "ours", "samples": len(lengths), "tokens": sum(lengths), "label_tokens": label_tokens,
            "over": {str(m): sum(1 for n in lengths if n > m) for m in max_lengths}, "split": split}


def _trl_trainer(tokenizer, work: Path, max_length, packing: bool, strategy: str, train_dataset):
    """An SFTTrainer around a tiny random Qwen3 (the model is irrelevant to data preparation; built untimed)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16,
                                         num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
                                         head_dim=8, max_position_embeddings=8192))
    args = SFTConfig(output_dir=str(work / "trl_out"), max_length=max_length, packing=packing,
                     packing_strategy=strategy, assistant_only_loss=True, report_to=[], use_cpu=True,
                     dataset_num_proc=None, logging_strategy="no", save_strategy="no")
    return SFTTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer), args


def _load_json_dataset(corpus: Path, work: Path):
    import datasets

    return datasets.load_dataset("json", data_files=str(corpus), split="train", cache_dir=str(work / "hf"))


def measure_trl(corpus: Path, max_length: int, work: Path, strategy: str = "bfd") -> Dict[str, Any]:
    """Time TRL's `SFTTrainer._prepare_dataset` (assistant_only_loss, packing with `strategy`) on the corpus."""
    tokenizer, _ = _qwen3_tokenizer()
    load_start = time.perf_counter()
    dataset = _load_json_dataset(corpus, work)
    load_seconds = time.perf_counter() - load_start
    trainer, args = _trl_trainer(tokenizer, work, max_length, True, strategy, dataset.select(range(4)))
    rss_before = _memory_kb("VmRSS")
    cpu, start = _cpu_seconds(), time.perf_counter()
    packed = trainer._prepare_dataset(dataset, tokenizer, args, True, None, "train")
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    peak = _memory_kb("VmHWM")
    return {"side": f"trl-{strategy}", "seconds": seconds, "cpu_seconds": cpu, "load_json_seconds": load_seconds,
            "rss_before_kb": rss_before, "peak_rss_kb": peak, "samples": len(dataset), **_row_counts(packed)}


def count_trl_inputs(corpus: Path, work: Path, max_lengths: List[int]) -> Dict[str, Any]:
    """Tokens and label tokens of every sample as TRL tokenises it, without packing or truncation (untimed); and
    what assistant_only_loss does with the Qwen3 tokenizer's own (asset) chat template."""
    import pyarrow.compute as pc

    tokenizer, own_template = _qwen3_tokenizer()
    dataset = _load_json_dataset(corpus, work)
    trainer, args = _trl_trainer(tokenizer, work, None, False, "bfd", dataset.select(range(4)))
    prepared = trainer._prepare_dataset(dataset, tokenizer, args, False, None, "train")
    counts = _row_counts(prepared)
    table = prepared.with_format("arrow")[:]
    lengths = pc.list_value_length(table.column("input_ids")).to_numpy()

    own_template_error = None
    tokenizer.chat_template = own_template
    try:
        _trl_trainer(tokenizer, work, 2048, True, "bfd", dataset.select(range(4)))
    except Exception as e:  # noqa: BLE001 - recorded verbatim for the report
        own_template_error = f"{type(e).__name__}: {e}"
    return {"side": "trl", "samples": counts["rows"], "tokens": counts["tokens"],
            "label_tokens": counts["label_tokens"], "over": {str(m): int((lengths > m).sum()) for m in max_lengths},
            "own_template_assistant_only_loss": own_template_error or "works"}


CHILDREN = {"ours": measure_ours, "ours-inputs": count_ours_inputs, "trl": measure_trl, "trl-inputs": count_trl_inputs}


def _child_main(spec: Dict[str, Any]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(spec.pop("work"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf")
    fn = CHILDREN[spec.pop("kind")]
    result_path = Path(spec.pop("result"))
    result = fn(Path(spec.pop("corpus")), work=work, **spec)
    result_path.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")


def run_child(kind: str, corpus: Path, scratch: Path, timeout: int = 3600, **kwargs) -> Dict[str, Any]:
    """Run one measurement in a fresh Python process; return its result dict (and its wall time)."""
    name = "-".join([kind] + [str(v) for v in kwargs.values() if v != "" and not isinstance(v, list)])
    work = scratch / name
    shutil.rmtree(work, ignore_errors=True)
    result = scratch / f"{name}.json"
    spec = {"kind": kind, "corpus": str(corpus), "work": str(work), "result": str(result), **kwargs}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    shutil.rmtree(work, ignore_errors=True)
    out = json.loads(result.read_text(encoding="utf-8"))
    out["process_seconds"] = round(time.perf_counter() - start, 2)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------------------------------


def _median(values: List[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def summarise(runs: List[Dict[str, Any]], inputs: Dict[str, Any], max_length: int) -> Dict[str, Any]:
    """One table row from the repeated runs of one pipeline at one max_length: median wall and CPU seconds,
    throughput, packing efficiency, tokens and label tokens that reached no row, peak memory (highest run)."""
    run = runs[0]  # the data results are identical in every repeat (deterministic); the times differ
    ours = run["side"].startswith("ours")
    seconds = _median([r["seconds"] for r in runs])
    cpu = _median([r["cpu_seconds"] for r in runs])
    row = {"max_length": max_length, "pipeline": run["side"], "repeats": len(runs), "samples": run["samples"],
           "seconds": round(seconds, 2), "seconds_all": [round(r["seconds"], 2) for r in runs],
           "cpu_seconds": round(cpu, 2), "cpu_seconds_all": [round(r["cpu_seconds"], 2) for r in runs],
           "samples_per_s": round(run["samples"] / seconds, 1), "tokens_per_s": round(inputs["tokens"] / seconds),
           "input_tokens": inputs["tokens"], "rows": run["rows"], "row_tokens": run["tokens"],
           "packing_efficiency": round(run["tokens"] / (run["rows"] * max_length), 5) if run["rows"] else 0.0,
           "input_label_tokens": inputs["label_tokens"],
           "label_tokens_lost": inputs["label_tokens"] - run["label_tokens"],
           "samples_over_max_length": inputs["over"][str(max_length)],
           "peak_rss_mib": round(max(r["peak_rss_kb"] for r in runs) / 1024),
           "rss_before_mib": round(run["rss_before_kb"] / 1024)}
    if ours:
        expected = inputs["split"][str(max_length)]
        keep_all = run.get("overlong") == "split_all"
        row["tokens_lost"] = run["reported"]["overlong"]["tokens_lost"]
        # split: prompt tokens in windows without labels (label_less_windows); split_all keeps every window
        row["tokens_lost_expected"] = 0 if keep_all else expected["lost"]
        # every input token is accounted for: rows = input - lost + the one-token overlaps of kept windows
        overlap = expected["overlap_all"] if keep_all else expected["overlap"]
        row["tokens_accounted"] = run["tokens"] == inputs["tokens"] - row["tokens_lost_expected"] + overlap
    else:
        row["tokens_lost"] = inputs["tokens"] - run["tokens"]  # TRL packs without repeating tokens
    return row


def markdown(rows: List[Dict[str, Any]]) -> str:
    head = ("| max_length | pipeline | wall s (median) | CPU s (median) | samples/s | tokens/s "
            "| ours ÷ TRL bfd (wall / CPU) | rows | packing efficiency | tokens lost | label tokens lost "
            "| peak RSS MiB (before) |")
    lines = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for r in rows:
        ratio = (f"{r['ratio_vs_trl_bfd']:.2f}× / {r['cpu_ratio_vs_trl_bfd']:.2f}×" if "ratio_vs_trl_bfd" in r else "—")
        lines.append(
            f"| {r['max_length']} | {r['pipeline']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
            f"{r['samples_per_s']:,.0f} | {r['tokens_per_s']:,} | {ratio} | {r['rows']:,} | "
            f"{100 * r['packing_efficiency']:.2f}% | {r['tokens_lost']:,} of {r['input_tokens']:,} | "
            f"{r['label_tokens_lost']:,} of {r['input_label_tokens']:,} | "
            f"{r['peak_rss_mib']:,} ({r['rss_before_mib']:,}) |")
    return "\n".join(lines)


def trl_available() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("trl") is not None
    except ValueError:
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--quick", action="store_true", help="500 samples")
    parser.add_argument("--max-lengths", default="2048,4096")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement (medians are reported)")
    parser.add_argument("--no-trl", action="store_true", help="measure our side only")
    parser.add_argument("--trl-strategies", default="bfd,bfd_split")
    parser.add_argument("--num-proc", type=int, default=1, help="data.num_proc for our side")
    parser.add_argument("--overlong", default="split,split_all", help="data.overlong modes for our side")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", default=None,
                        help="JSON result file (default bench/results/data_pipeline[_quick].json)")
    parser.add_argument("--scratch", default=None, help="folder for the corpus and work files (default: a temp folder)")
    parser.add_argument("--profile", default="", help="write a cProfile of our side (first run) to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child_main(json.loads(args.child))
        return 0

    n = 500 if args.quick else args.samples
    max_lengths = [int(x) for x in args.max_lengths.split(",")]
    use_trl = not args.no_trl and trl_available()
    if not args.no_trl and not use_trl:
        print("trl is not installed: measuring our side only. For the comparison: "
              ".venv/bin/pip install -c <(echo torch==2.13.0) trl==1.16.0", flush=True)
    strategies = args.trl_strategies.split(",") if use_trl else []
    out_path = Path(args.out) if args.out else REPO / "bench" / "results" / (
        "data_pipeline_quick.json" if args.quick else "data_pipeline.json")
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench-data-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        corpus = scratch / "corpus.jsonl"
        started = time.perf_counter()
        kinds = write_corpus(corpus, n, args.seed)
        print(f"corpus: {n} samples {kinds} → {corpus} ({time.perf_counter() - started:.1f}s)", flush=True)

        inputs = {"ours": run_child("ours-inputs", corpus, scratch, max_lengths=max_lengths)}
        if use_trl:
            inputs["trl"] = run_child("trl-inputs", corpus, scratch, max_lengths=max_lengths)
        print(f"inputs: {json.dumps(inputs, ensure_ascii=False)}", flush=True)

        # repeats outermost, sides interleaved: a change in the machine's load hits both sides alike
        runs: Dict[tuple, List[Dict[str, Any]]] = {}
        for repeat in range(args.repeat):
            for max_length in max_lengths:
                for overlong in args.overlong.split(","):
                    ours = run_child("ours", corpus, scratch, max_length=max_length, num_proc=args.num_proc,
                                     profile=args.profile if not runs else "", overlong=overlong)
                    runs.setdefault((max_length, ours["side"]), []).append(ours)
                for strategy in strategies:
                    trl = run_child("trl", corpus, scratch, max_length=max_length, strategy=strategy)
                    runs.setdefault((max_length, f"trl-{strategy}"), []).append(trl)
                print(f"repeat {repeat + 1}, max_length {max_length}: " + ", ".join(
                    f"{side} {r[-1]['seconds']:.1f}s" for (m, side), r in runs.items() if m == max_length), flush=True)

        rows = []
        for max_length in max_lengths:
            group = [summarise(r, inputs["ours"], max_length) for (m, side), r in runs.items()
                     if m == max_length and side.startswith("ours")]
            group += [summarise(runs[(max_length, f"trl-{s}")], inputs["trl"], max_length) for s in strategies]
            base = next((r for r in group if r["pipeline"] == "trl-bfd"), None)
            for r in group:
                if base is not None and r is not base:
                    r["ratio_vs_trl_bfd"] = round(base["seconds"] / r["seconds"], 2)
                    r["cpu_ratio_vs_trl_bfd"] = round(base["cpu_seconds"] / r["cpu_seconds"], 2)
            rows.extend(group)

        table = markdown(rows)
        print("\n" + table)
        command = " ".join(["python", "bench/data_pipeline.py"] + list(argv if argv is not None else sys.argv[1:]))
        result = {"date": time.strftime("%Y-%m-%d"), "samples": n, "seed": args.seed, "kinds": kinds,
                  "machine": machine(), "command": command, "inputs": inputs, "rows": rows,
                  "runs": {f"{m}/{side}": r for (m, side), r in runs.items()}, "table": table}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
        print(f"\nwritten: {out_path}")
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def machine() -> Dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown") if Path("/proc/cpuinfo").exists() else "unknown"
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0) if Path("/proc/meminfo").exists() else 0
    versions = {}
    for name in ("datasets", "transformers", "tokenizers", "trl", "pyarrow"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001 - not installed
            versions[name] = None
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kb / 2**20, 1), "python": sys.version.split()[0],
            **versions}


if __name__ == "__main__":
    sys.exit(main())
