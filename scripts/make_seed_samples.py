"""Write a small Korean sample for each shipped seed recipe (deterministic: the same seed always gives the same files),
so that every recipe's `python -m launch prepare` runs as written before the user's full data is in place:

    data/keywords/train.jsonl, labelled.jsonl   gemma_2b_keywords_lora.yaml        seed 001: alpaca + {text, labels}
    data/finance_news/train.jsonl               llama3_varco_8b_finance_lora.yaml  seed 002: system/user/assistant
    data/raft/train.jsonl, validation.jsonl     exaone_7_8b_raft_qlora.yaml        seed 003: RAFT with distractors
    data/mna/train.jsonl                        qwen3_8b_mna_lora.yaml             seed 004: {question, answer}
    data/chat/train.jsonl                       llama3_70b_qlora_zero3.yaml        OpenAI messages, multi-turn

Each file is in its seed's exact format. The medicine sentences and finance news come from scripts/make_demo_data.py's
templates and invented companies (drawn with another seed, so they share no text with data/demo/); the QA pairs and
RAFT passages are hand-written (scripts/seed_texts.py). data/README.md says where the full data goes. Usage:

    python scripts/make_seed_samples.py [--out data] [--seed 20261207]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_demo_data import (COMPANIES, COUNTRIES, SECTORS, attach_josa, fill, keyword_record,  # noqa: E402
                            unique_records, write_jsonl)
from seed_texts import MNA_QA, MNA_SYSTEM_PROMPT, RAFT_INSTRUCTION, RAFT_TOPICS  # noqa: E402

DEFAULT_SEED = 20261207
REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO = REPO_ROOT / "data" / "demo"

# ----------------------------------------------------------------------------------------------------------------------
# Seed 001: keywords, the instruction of the seed's level 3
# ----------------------------------------------------------------------------------------------------------------------

KEYWORD_INSTRUCTION = "다음 문장에서 의약품 키워드를 JSON 배열로 추출하세요."  # also the recipe's `instruction:`


def keyword_files(rng: random.Random, n: int) -> Tuple[List[Dict], List[Dict]]:
    """(alpaca records, {text, labels} records): 2n distinct sentences, none of them in data/demo/."""
    demo = {json.loads(line)["input"] for name in ("keywords_train.jsonl", "keywords_eval.jsonl")
            for line in (DEMO / name).read_text(encoding="utf-8").splitlines()}

    def fresh(r: random.Random):
        record = keyword_record(r)
        return None if record is None or record["input"] in demo else record

    records = unique_records(fresh, rng, 2 * n, "input")
    alpaca = [{"instruction": KEYWORD_INSTRUCTION, "input": r["input"], "output": r["output"]} for r in records[:n]]
    labelled = [{"text": r["input"], "labels": r["output"]} for r in records[n:]]
    return alpaca, labelled


# ----------------------------------------------------------------------------------------------------------------------
# Seed 002: finance news judgement, the notebook's system prompt and answer schema (a Python dict literal)
# ----------------------------------------------------------------------------------------------------------------------

FINANCE_SYSTEM_PROMPT = """당신은 주어진 뉴스로부터 종목에 영향을 주는 뉴스인지 판별하는 금융 뉴스 판별기입니다.
두 가지 답변 케이스가 존재하며 무조건 파이썬의 dictionary 형식으로 작성하십시오.
큰 따옴표 사이에 다른 따옴표들을 적으려고 시도하지 마십시오. 이는 dictionary 파싱을 실패하게 하는 원인이 됩니다. 따라서 주의하십시오.
아래 dictionary에서 각 value는 지시사항에 해당합니다. 지사사항을 따라 적지마십시오. 해당 지시사항에 따라 적절한 value를 채워넣으십시오.
해당사항이 없다면 빈 문자열 또는 빈 리스트로 적어야 합니다. 임의로 '없음' 등을 적어서는 안 됩니다.

만약 해당 뉴스가 특정 종목(회사)이 언급되지 않거나, 특정 종목(회사)와 아무런 연관이 없는 뉴스일 경우에는 아래와 같이 작성합니다.

답변:
{"is_stock_related": False,
"summary": "여기에는 해당 뉴스를 요약해서 요약문을 작성하십시오"}

만약 해당 뉴스가 특정 종목(회사)들과 연관되었을 경우에는 아래와 같이 작성합니다.

답변:
{"is_stock_related": True,
"positive_impact_stocks": ["파이썬 문자열 리스트의 형태로 이 뉴스가 긍정적인 영향을 줄것으로 추정되는 종목들의 이름을 작성하십시오. 약자로 적거나 별명으로 적지마십시오. 종목명으로 추정되는 한글명을 적으십시오. 뉴스로부터 추정할 수 있는 정확한 풀네임으로 적으십시오. 만약, 존재하지 않는다면 빈 리스트로 작성하십시오."],
"reason_for_positive_impact": "위의 종목들이 해당 뉴스로부터 긍정적인 영향을 받을 것으로 추정한 이유를 여기에다가 작성하십시오",
"positive_keywords": ["긍정적인 영향을 줄 것으로 추정되는 종목들이 존재했다면 여기에 긍정적인 영향을 주는데 근거가 된 핵심 키워드들을 파이썬 문자열 리스트로 작성하십시오."],
"negative_impact_stocks": ["파이썬 문자열 리스트의 형태로 이 뉴스가 부정적인 영향을 줄것으로 추정되는 종목들의 이름을 작성하십시오. 만약, 존재하지 않는다면 빈 리스트로 작성하십시오."],
"reason_for_negative_impact": "위의 종목들이 해당 뉴스로부터 부정적인 영향을 받을 것으로 추정한 이유를 여기에다가 작성하십시오",
"negative_keywords": ["부정적인 영향을 줄 것으로 추정되는 종목들이 존재했다면 여기에 부정적인 영향을 주는데 근거가 된 핵심 키워드들을 파이썬 문자열 리스트로 작성하십시오."]}"""

# (news: headline sentence + follow-up, who gains, who loses, reason for the gain, reason for the loss, keywords)
NEWS_EVENTS = [
    ("{A|가} {q}분기 영업이익이 전년 같은 기간보다 {p}% 늘었다고 공시했다. {product} 판매가 늘고 원가 부담이 줄어든 "
     "영향이라고 회사는 설명했다.", ["A"], [], "{product} 판매 증가로 분기 영업이익이 크게 늘어 실적 개선 기대가 커졌습니다.",
     "", ["영업이익 증가", "판매 증가"], []),
    ("{A|가} {country}에서 {n}천억 원 규모의 {product} 공급 계약을 따냈다. 이번 수주는 지난해 매출의 상당 부분에 해당하는 "
     "규모다.", ["A"], [], "대규모 {product} 공급 계약을 수주해 향후 매출 증가가 예상됩니다.", "", ["수주", "공급 계약"], []),
    ("{A|가} {n}천억 원 규모의 자사주를 매입하고 소각하기로 결정했다. 회사는 주주환원 정책을 강화하겠다고 밝혔다.",
     ["A"], [], "자사주 매입과 소각으로 주당 가치가 높아지고 주주환원 기대가 커졌습니다.", "",
     ["자사주 매입", "자사주 소각", "주주환원"], []),
    ("{A|가} {q}분기에 영업손실을 내며 적자로 돌아섰다. 주력 제품인 {product}의 재고가 쌓이고 가격이 떨어진 탓이다.",
     [], ["A"], "", "주력 제품 {product}의 가격 하락과 재고 증가로 분기 적자 전환이 확인되었습니다.", [],
     ["적자 전환", "재고 증가", "가격 하락"]),
    ("{A}의 {product}에서 결함이 발견돼 대규모 리콜에 들어간다. 리콜 비용은 수천억 원에 이를 것으로 추정된다.",
     [], ["A"], "", "{product} 결함에 따른 대규모 리콜 비용이 실적에 부담이 될 것으로 보입니다.", [], ["결함", "리콜"]),
    ("{A} 공장에서 화재가 발생해 {product} 생산이 중단됐다. 회사는 복구에 최소 한 달이 걸릴 것으로 내다봤다.",
     [], ["A"], "", "공장 화재로 {product} 생산이 멈춰 매출 차질이 불가피합니다.", [], ["공장 화재", "생산 중단"]),
    ("{A|가} {B|를} 상대로 낸 특허 침해 소송에서 1심 승소 판결을 받았다. 법원은 {B|가} {A}에 손해배상금을 지급하라고 "
     "판결했다.", ["A"], ["B"], "특허 소송에서 승소해 손해배상금을 받게 되었고 기술력도 인정받았습니다.",
     "특허 침해 소송에서 패소해 손해배상금을 지급해야 합니다.", ["특허 소송 승소", "손해배상"], ["특허 소송 패소", "손해배상금"]),
    ("{A} 공장 화재로 {product} 공급이 줄어들자 경쟁사 {B|가} 반사이익을 볼 것이라는 전망이 나온다. 증권가는 {B}의 "
     "점유율 확대를 예상했다.", ["B"], ["A"], "경쟁사의 공급 차질로 점유율이 늘어날 것으로 전망됩니다.",
     "공장 화재로 {product} 공급이 줄어 점유율 하락이 우려됩니다.", ["반사이익", "점유율 확대"], ["공장 화재", "공급 차질"]),
    ("{A|와} {B|가} 차세대 {product|을} 공동 개발하는 업무협약을 맺었다. 두 회사는 연구 인력과 설비를 함께 쓰기로 했다.",
     ["A", "B"], [], "차세대 {product} 공동 개발로 기술 경쟁력과 비용 효율이 높아질 것으로 기대됩니다.", "",
     ["공동 개발", "업무협약"], []),
    ("{country} 정부가 {product} 수입 규제를 강화하면서 {A}의 현지 판매가 줄어들 전망이다. {A}는 대응책을 마련하고 "
     "있다고 밝혔다.", [], ["A"], "", "{country}의 수입 규제 강화로 현지 판매 감소가 예상됩니다.", [],
     ["수입 규제", "판매 감소"]),
]

OTHER_NEWS = [
    ("기상청은 내일 {region}에 시간당 30밀리미터 안팎의 강한 비가 내릴 것으로 예보했다. 산사태와 침수 피해에 대비해야 "
     "한다고 당부했다.", "{region}에 내일 강한 비가 예보되어 침수와 산사태 대비가 필요하다."),
    ("{region}에서 이번 주말 {festival} 축제가 열린다. 시는 행사 기간 동안 주변 도로를 통제하고 대중교통을 늘린다고 밝혔다.",
     "{region}에서 주말에 {festival} 축제가 열리며 주변 도로가 통제된다."),
    ("{region} 지하철 {line}호선이 선로 점검을 위해 다음 주 토요일 하루 운행을 멈춘다. 시는 대체 버스를 투입한다.",
     "{region} 지하철 {line}호선이 선로 점검으로 하루 운행을 중단하고 대체 버스가 투입된다."),
    ("{region} 시립도서관이 다음 달부터 평일 운영 시간을 밤 10시까지 늘린다. 시험 기간에 이용객이 많다는 의견을 반영했다.",
     "{region} 시립도서관이 평일 운영 시간을 밤 10시까지 연장한다."),
    ("올해 {region}의 벚꽃은 평년보다 {n}일 이르게 필 것으로 보인다. 기상업체는 따뜻한 3월 날씨를 이유로 들었다.",
     "{region}의 벚꽃이 평년보다 {n}일 이르게 필 전망이다."),
]
REGIONS = ["서울", "부산", "대구", "인천", "광주", "대전", "울산", "제주", "강릉", "전주", "춘천", "포항"]
FESTIVALS = ["불꽃", "벚꽃", "국화", "빛", "음식", "재즈"]


def finance_answer(related: bool, **fields) -> str:
    """The assistant text as the seed's dataset writes it: a Python dict literal (True/False, double quotes)."""
    if not related:
        return "{" + f'"is_stock_related": False, "summary": {json.dumps(fields["summary"], ensure_ascii=False)}' + "}"
    keys = ["positive_impact_stocks", "reason_for_positive_impact", "positive_keywords", "negative_impact_stocks",
            "reason_for_negative_impact", "negative_keywords"]
    body = ", ".join(f'"{k}": {json.dumps(fields[k], ensure_ascii=False)}' for k in keys)
    return '{"is_stock_related": True, ' + body + "}"


def finance_record(rng: random.Random) -> Dict:
    numbers = {"q": str(rng.randint(1, 4)), "p": str(rng.randint(5, 60)), "n": str(rng.randint(2, 9)),
               "line": str(rng.randint(1, 9))}
    if rng.random() < 0.75:
        news, gains, loses, why_up, why_down, up_words, down_words = rng.choice(NEWS_EVENTS)
        a, b = rng.sample(sorted(SECTORS[rng.choice(sorted(SECTORS))]), 2)
        values = {**numbers, "A": a, "B": b, "product": rng.choice(COMPANIES[a]), "country": rng.choice(COUNTRIES)}
        answer = finance_answer(
            True, positive_impact_stocks=[values[s] for s in gains],
            reason_for_positive_impact=fill(why_up, values), positive_keywords=list(up_words),
            negative_impact_stocks=[values[s] for s in loses], reason_for_negative_impact=fill(why_down, values),
            negative_keywords=list(down_words))
        text = fill(news, values)
    else:
        news, summary = rng.choice(OTHER_NEWS)
        values = {**numbers, "region": rng.choice(REGIONS), "festival": rng.choice(FESTIVALS)}
        text, answer = fill(news, values), finance_answer(False, summary=fill(summary, values))
    return {"system_prompt": FINANCE_SYSTEM_PROMPT, "user_prompt": text, "assistant": answer}


# ----------------------------------------------------------------------------------------------------------------------
# Seed 003: RAFT with distractor passages
# ----------------------------------------------------------------------------------------------------------------------

RAFT_LABELS = ["서울", "태극기", "부산", "한글", "한라산", "한국은행", "코스피", "광합성", "물의 끓는점", "경주",
               "합병 결의", "5% 룰", "세종특별자치시", "인천국제공항", "김치", "명량 해전"]


def particle(word: str, josa: str) -> str:
    """The form of `josa` that follows `word` (의 quotes: '서울'을 needs the particle of 서울, not of the quote mark)."""
    return attach_josa(word, josa)[len(word):]


def raft_records(rng: random.Random) -> List[Dict]:
    """One record per question: its topic's passage (golden) and two or three other topics' (distractors)."""
    assert len(RAFT_LABELS) == len(RAFT_TOPICS)
    records = []
    for index, (golden, questions) in enumerate(RAFT_TOPICS):
        for question, answer, short in questions:
            others = rng.sample([i for i in range(len(RAFT_TOPICS)) if i != index], rng.choice([2, 3]))
            labels = [RAFT_LABELS[i] for i in others]
            topics = ", ".join(labels[:-1]) + f"{particle(labels[-2], '과')} {labels[-1]}" if len(labels) > 2 else \
                f"{labels[0]}{particle(labels[0], '과')} {labels[1]}"
            cot = (f"질문은 {RAFT_LABELS[index]}에 관한 것입니다. 주어진 문맥 중 '{' '.join(golden.split()[:3])} ...' 문장으로 시작하는 문맥이 "
                   f"질문에 직접 답하는 정보를 담고 있습니다. 나머지 문맥은 각각 {topics}에 관한 내용으로 질문과 무관하므로 "
                   f"무시하고, 해당 문맥에서 '{short}'{particle(short, '을')} 찾아 답변을 구성합니다.")
            records.append({"instruction": RAFT_INSTRUCTION, "context": [golden] + [RAFT_TOPICS[i][0] for i in others],
                            "question": question, "answer": answer, "cot": cot})
    rng.shuffle(records)
    return records


# ----------------------------------------------------------------------------------------------------------------------
# Seed 004 (QA) and the 70B recipe's chat messages
# ----------------------------------------------------------------------------------------------------------------------


def mna_records() -> List[Dict]:
    return [{"question": q, "answer": a} for q, a in MNA_QA]


def chat_records(rng: random.Random, n: int) -> List[Dict]:
    """Two-turn conversations (system prompt, two questions and answers) from the QA pairs."""
    records, pairs = [], list(MNA_QA)
    for _ in range(n):
        (q1, a1), (q2, a2) = rng.sample(pairs, 2)
        records.append({"messages": [{"role": "system", "content": MNA_SYSTEM_PROMPT},
                                     {"role": "user", "content": q1}, {"role": "assistant", "content": a1},
                                     {"role": "user", "content": q2}, {"role": "assistant", "content": a2}]})
    return records


README = """# Sample data for the seed recipes / 시드 레시피용 샘플 데이터

Small Korean samples in each seed's exact format, so that `python -m launch prepare --config <recipe>` runs as
written before your full data is in place. Written by `python scripts/make_seed_samples.py` (seed {seed}); the
texts are hand-written (scripts/seed_texts.py) or generated from templates with invented company names. They show
the format and let you try the pipeline; they are far too small to fine-tune a useful model.
작은 예시입니다. 실제 학습에는 아래 위치에 전체 데이터를 넣으세요.

| recipe | sample | format | your full data goes |
| --- | --- | --- | --- |
| `gemma_2b_keywords_lora.yaml` (seed 001) | `keywords/train.jsonl` ({kw}), `keywords/labelled.jsonl` ({kl}) | alpaca `{{"instruction", "input", "output": [..]}}`; `{{"text", "labels": [..]}}` | replace both files (either may be dropped from `data.sources`) |
| `llama3_varco_8b_finance_lora.yaml` (seed 002) | `finance_news/train.jsonl` ({fn}) | `{{"system_prompt", "user_prompt", "assistant"}}`, assistant a Python dict literal | the seed's 991 records: `path: iamjoon/finance_news_summarizer` on a machine with hub access, or a local JSONL/Parquet export in this folder |
| `exaone_7_8b_raft_qlora.yaml` (seed 003) | `raft/train.jsonl` ({rt}), `raft/validation.jsonl` ({rv}) | `{{"instruction", "context": [..], "question", "answer", "cot"}}` | replace both files (validation: questions held out from training) |
| `qwen3_8b_mna_lora.yaml` (seed 004) | `mna/train.jsonl` ({mn}) | `{{"question", "answer"}}` | replace the file, or put several files here and set `path: data/mna/*.jsonl` (delete the sample then) |
| `llama3_70b_qlora_zero3.yaml` | `chat/train.jsonl` ({ch}) | OpenAI `{{"messages": [..]}}` | replace the file, or set `path: data/chat/*.jsonl` |

A recipe reads exactly the files named in its `data.sources`; point them anywhere (`data.sources.0.path=...` on the
command line works too). `python -m launch inspect --config <recipe>` shows how samples render and what is trained.
"""


def make_seed_samples(out: Path, seed: int = DEFAULT_SEED) -> Dict[str, int]:
    """Write every sample file and data/README.md under `out`; return the number of records per file."""
    rng = random.Random(seed)
    keywords, labelled = keyword_files(rng, 40)
    raft = raft_records(rng)
    files = {
        "keywords/train.jsonl": keywords,
        "keywords/labelled.jsonl": labelled,
        "finance_news/train.jsonl": unique_records(finance_record, rng, 60, "user_prompt"),
        "raft/train.jsonl": raft[:-6],
        "raft/validation.jsonl": raft[-6:],
        "mna/train.jsonl": mna_records(),
        "chat/train.jsonl": chat_records(rng, 24),
    }
    for name, records in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / name, records)
    n = {name: len(records) for name, records in files.items()}
    (out / "README.md").write_text(README.format(
        seed=seed, kw=n["keywords/train.jsonl"], kl=n["keywords/labelled.jsonl"], fn=n["finance_news/train.jsonl"],
        rt=n["raft/train.jsonl"], rv=n["raft/validation.jsonl"], mn=n["mna/train.jsonl"], ch=n["chat/train.jsonl"]),
        encoding="utf-8")
    return n


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data", help="output folder (data)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (same seed, same files)")
    args = parser.parse_args(argv)
    for name, count in make_seed_samples(args.out, args.seed).items():
        print(f"{args.out / name}: {count} records")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
