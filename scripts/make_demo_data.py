"""Write the small Korean demo dataset in data/demo/ (deterministic: the same seed always gives the same files).

Two synthetic tasks in the formats of the users' own workflows, sized for a LoRA demo on SmolLM2-135M-Instruct that runs
on a 2-core CPU in minutes:

- keywords (seed 001, alpaca): {"instruction", "input": a Korean sentence about an over-the-counter medicine,
  "output": the vocabulary words it contains, in order of appearance}.
- finance (seed 002, columns): {"system_prompt", "user_prompt": a short Korean news item,
  "assistant": a JSON object as text: is_stock_related + positive/negative_impact_stocks, or false + a short summary}.

Sentences come from templates filled from small vocabularies. Every company name is invented, and the medicine sentences
only pair an ingredient with its usual indications, so the data states no fake news about real firms. Train and eval
never share an input. Usage:

    python scripts/make_demo_data.py [--out data/demo] [--seed 20251121]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

DEFAULT_SEED = 20251121
N_TRAIN, N_EVAL = 200, 30
REPO_ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------------------------------------------------
# Korean particles (josa): the right form depends on whether the word ends in a final consonant (batchim).
# ----------------------------------------------------------------------------------------------------------------------

JOSA_PAIRS = {  # key written in templates -> (after a final consonant, after a vowel)
    "이": ("이", "가"), "가": ("이", "가"),
    "은": ("은", "는"), "는": ("은", "는"),
    "을": ("을", "를"), "를": ("을", "를"),
    "과": ("과", "와"), "와": ("과", "와"),
    "으로": ("으로", "로"), "로": ("으로", "로"),
}


DIGIT_READINGS = "영일이삼사오육칠팔구"  # how a final digit is read aloud decides the particle: 1로, 3으로


def final_consonant(word: str) -> int:
    """Index of the last syllable's final consonant (0 = none, 8 = ㄹ); digits count as read aloud (10 = 십)."""
    last = word[-1]
    if last.isdigit():
        last = "십" if word.endswith("0") and len(word) > 1 else DIGIT_READINGS[int(last)]
    code = ord(last) - 0xAC00
    return code % 28 if 0 <= code < 11172 else 0


def attach_josa(word: str, josa: str) -> str:
    """`word` followed by the form of `josa` that fits it: attach_josa("파스", "과") == "파스와"."""
    with_consonant, with_vowel = JOSA_PAIRS[josa]
    batchim = final_consonant(word)
    if josa in ("으로", "로"):
        return word + ("로" if batchim in (0, 8) else "으로")
    return word + (with_consonant if batchim else with_vowel)


SLOT = re.compile(r"\{(\w+?)(?:\|(\w+))?\}")


def fill(template: str, values: Dict[str, str]) -> str:
    """Replace {slot} and {slot|josa} in `template` with values[slot] (plus the fitting particle)."""

    def replace(match: re.Match) -> str:
        word = values[match.group(1)]
        return attach_josa(word, match.group(2)) if match.group(2) else word

    return SLOT.sub(replace, template)


def slot_names(template: str) -> List[str]:
    return [m.group(1) for m in SLOT.finditer(template)]


# ----------------------------------------------------------------------------------------------------------------------
# Task 1: medicine keywords (seed 001)
# ----------------------------------------------------------------------------------------------------------------------

KEYWORD_INSTRUCTION = "다음 문장에서 의약품 키워드를 추출하세요."

# ingredient -> (effects, symptoms it is commonly used for, dosage forms it is sold in)
INGREDIENTS: Dict[str, Tuple[List[str], List[str], List[str]]] = {
    "아세트아미노펜": (["진통", "해열"], ["두통", "발열", "치통", "생리통"], ["정제", "시럽", "과립"]),
    "이부프로펜": (["진통", "해열", "소염"], ["두통", "발열", "근육통", "생리통"], ["정제", "캡슐", "시럽"]),
    "케토프로펜": (["진통", "소염"], ["근육통", "관절통", "요통"], ["파스", "겔"]),
    "디클로페낙": (["진통", "소염"], ["근육통", "관절통", "요통"], ["파스", "겔", "스프레이"]),
    "록소프로펜": (["진통", "소염"], ["관절통", "요통", "치통"], ["정제", "파스"]),
    "덱스트로메토르판": (["진해"], ["기침"], ["시럽", "정제"]),
    "암브록솔": (["거담"], ["가래", "기침"], ["시럽", "정제"]),
    "세티리진": (["항히스타민"], ["콧물", "재채기", "가려움"], ["정제", "시럽"]),
    "로라타딘": (["항히스타민"], ["콧물", "재채기", "두드러기"], ["정제"]),
    "클로르페니라민": (["항히스타민"], ["콧물", "재채기"], ["정제", "시럽"]),
    "파모티딘": (["위산억제"], ["속쓰림"], ["정제"]),
    "로페라미드": (["지사"], ["설사"], ["캡슐"]),
    "비사코딜": (["배변촉진"], ["변비"], ["정제"]),
    "시메티콘": (["가스제거"], ["복부팽만"], ["정제", "캡슐"]),
    "히드로코르티손": (["소염"], ["가려움", "습진"], ["연고", "크림"]),
    "무피로신": (["항균"], ["상처"], ["연고"]),
    "덱스판테놀": (["피부재생"], ["상처", "화상"], ["연고", "크림"]),
}
TARGETS = ["임산부", "수유부", "노인", "어린이", "영유아", "청소년", "직장인", "수험생"]
PHARMA_COMPANIES = ["한빛제약", "누리약품", "새봄제약", "다온헬스", "가람제약", "솔빛약품", "이룸제약"]  # invented names

# Templates mix keywords with distractors (약사, 의사, 약국, 감기, 제품, 성분 ...) that are not keywords.
KEYWORD_TEMPLATES = [
    "{eff|과} {eff2} 효과가 있는 {form}형 의약품을 {target|이} 쓰려면 약사와 상담하세요.",
    "{company|가} {ing} 성분의 {form|을} 새로 출시했습니다.",
    "{sym|이} 심할 때 쓰는 {ing} {form|은} {company} 제품입니다.",
    "{target}용 {sym} {form|이} 약국에 있나요?",
    "{ing|은} {eff} 작용이 있어 {sym|과} {sym2}에 쓰입니다.",
    "{target|은} {ing|을} 쓰기 전에 의사와 상담해야 합니다.",
    "{company}의 {form} 제품은 {sym} 완화를 돕습니다.",
    "약국에서 {sym|과} {sym2}에 쓰는 {form|을} 샀어요.",
    "{ing|과} {ing2|을} 함께 쓰기 전에 {target|은} 약사와 상담하세요.",
    "오늘 {company|가} {target|을} 위한 {form} 신제품을 발표했다.",
    "{sym} 때문에 {ing} {form|을} 사용했습니다.",
    "{form|과} {form2} 중 {target}에게 더 편한 제형은 무엇인가요?",
    "{eff} 효과를 원하면 {ing|이} 든 {form|을} 찾아보세요.",
    "{company|는} {ing} {form}의 판매를 늘렸다.",
    "{target} 보호자들이 {sym}에 쓰는 {form|을} 많이 찾는다고 합니다.",
    "이 {form|은} {eff} 효과가 있으며 {company|가} 만들었습니다.",
    "{sym|과} {sym2|이} 있을 때 {ing|을} 찾는 사람이 많다.",
    "{ing} {form|은} {sym}에 쓰이며 {target|은} 사용량을 확인해야 합니다.",
    "감기 기운에 {sym|이} 있어 약국에서 {form|을} 받았다.",
]


def keyword_vocabulary() -> List[str]:
    """Every word that counts as a keyword: ingredients, effects, symptoms, forms, target groups, companies."""
    words = set(INGREDIENTS) | set(TARGETS) | set(PHARMA_COMPANIES)
    for effects, symptoms, forms in INGREDIENTS.values():
        words.update(effects, symptoms, forms)
    return sorted(words)


def find_keywords(text: str, vocabulary: Sequence[str]) -> List[str]:
    """The vocabulary words that occur in `text`, each once, in order of first appearance."""
    found = [(text.find(word), word) for word in vocabulary if word in text]
    return [word for _, word in sorted(found)]


def _pick_distinct(rng: random.Random, pool: Sequence[str], k: int) -> List[str]:
    return rng.sample(list(pool), k) if len(pool) >= k else []


def keyword_record(rng: random.Random) -> Dict | None:
    """One keywords record from a random template, or None when the drawn ingredient cannot fill the template."""
    template = rng.choice(KEYWORD_TEMPLATES)
    slots = slot_names(template)
    ingredient = rng.choice(sorted(INGREDIENTS))
    effects, symptoms, forms = INGREDIENTS[ingredient]
    eff = _pick_distinct(rng, effects, 2 if "eff2" in slots else 1)
    sym = _pick_distinct(rng, symptoms, 2 if "sym2" in slots else 1)
    form = _pick_distinct(rng, forms, 2 if "form2" in slots else 1)
    if not (eff and sym and form):
        return None
    values = {
        "ing": ingredient, "ing2": rng.choice([i for i in sorted(INGREDIENTS) if i != ingredient]),
        "eff": eff[0], "eff2": eff[-1], "sym": sym[0], "sym2": sym[-1], "form": form[0], "form2": form[-1],
        "target": rng.choice(TARGETS), "company": rng.choice(PHARMA_COMPANIES),
    }
    text = fill(template, values)
    keywords = find_keywords(text, keyword_vocabulary())
    expected = {values[s] for s in slots}
    if set(keywords) != expected:  # a template or vocabulary bug: a slot word hidden, or a stray keyword
        raise AssertionError(f"template {template!r} gave {keywords}, expected {sorted(expected)}")
    return {"instruction": KEYWORD_INSTRUCTION, "input": text, "output": keywords}


# ----------------------------------------------------------------------------------------------------------------------
# Task 2: finance news judgement (seed 002)
# ----------------------------------------------------------------------------------------------------------------------

FINANCE_SYSTEM_PROMPT = (
    "종목 관련 뉴스인지 JSON으로만 답하세요. 관련: is_stock_related true, positive_impact_stocks(호재), "
    "negative_impact_stocks(악재). 무관: false, summary(짧은 요약)."
)

SECTORS = {  # sector -> invented listed companies -> goods they make (every template may say a product is made)
    "electronics": {"한결전자": ["스마트폰", "반도체"], "미래반도체": ["메모리 반도체"], "누리디스플레이": ["디스플레이"]},
    "auto": {"새길자동차": ["전기차", "SUV"], "한울모빌리티": ["자동차 부품"], "물길타이어": ["타이어"]},
    "bio": {"다온바이오": ["항암제", "백신"], "세움바이오": ["바이오시밀러", "백신"]},
    "battery": {"가온화학": ["배터리 소재"], "온누리배터리": ["배터리", "배터리 소재"]},
    "shipbuilding": {"동해조선": ["LNG 운반선", "컨테이너선"], "바다중공업": ["LNG 운반선", "풍력 설비"]},
    "appliances": {"별빛가전": ["냉장고", "세탁기"], "하늘전기": ["변압기", "전력 설비"]},
    "consumer": {"고운식품": ["라면", "냉동식품"], "나래화장품": ["화장품", "선크림"]},
    "aerospace": {"구름항공우주": ["위성", "항공기 부품"], "새벽에어로": ["항공기 엔진", "드론"]},
}
COMPANIES = {name: goods for companies in SECTORS.values() for name, goods in companies.items()}
COUNTRIES = ["미국", "유럽", "일본", "인도", "베트남", "중동", "브라질", "캐나다"]

# (template, who gains, who loses); A and B are two companies of one sector, other slots are filled below.
STOCK_TEMPLATES: List[Tuple[str, List[str], List[str]]] = [
    ("{A|가} {q}분기 영업이익이 전년보다 {p}% 늘었다고 밝혔다.", ["A"], []),
    ("{A}, {country}에서 {n}천억 원 규모 {product} 수주", ["A"], []),
    ("{A|가} 만든 {product|이} {country}에서 판매 승인을 받았다.", ["A"], []),
    ("{A} 주가가 {product} 판매 호조에 {p}% 급등했다.", ["A"], []),
    ("{A|가} {n}천억 원 규모 자사주 매입을 결정했다.", ["A"], []),
    ("{A|가} {q}분기 영업손실을 내며 적자로 돌아섰다.", [], ["A"]),
    ("{A}의 {product}에서 결함이 발견돼 대규모 리콜에 들어간다.", [], ["A"]),
    ("{A} 공장에 화재가 나 {product} 생산이 멈췄다.", [], ["A"]),
    ("{country}의 수출 규제로 {A}의 {product} 판매가 줄었다.", [], ["A"]),
    ("{A} 주가가 실적 부진 우려에 {p}% 급락했다.", [], ["A"]),
    ("{A|가} {B|를} 상대로 낸 특허 소송에서 이겼다.", ["A"], ["B"]),
    ("{A|와} {B|가} {product} 공동 개발 계약을 맺었다.", ["A", "B"], []),
    ("{A} 공장 화재로 경쟁사 {B|가} 반사이익을 볼 전망이다.", ["B"], ["A"]),
    ("{A}의 {product} 리콜로 경쟁사 {B}에 주문이 몰리고 있다.", ["B"], ["A"]),
]

REGIONS = ["서울", "부산", "대구", "인천", "광주", "대전", "울산", "제주", "강릉", "전주", "춘천", "포항"]
WEATHER = ["비", "눈", "소나기", "강풍"]
FESTIVALS = ["불꽃", "벚꽃", "국화", "빛", "음식", "재즈"]

# (news template, summary template): everyday news that names no company.
OTHER_TEMPLATES: List[Tuple[str, str]] = [
    ("기상청은 내일 {region}에 {weather|가} 올 것으로 예보했다.", "{region} 내일 {weather} 예보"),
    ("{region}에서 이번 주말 {festival} 축제가 열린다.", "{region} {festival} 축제 개최"),
    ("프로야구 {region} 팀이 어제 경기에서 {n}대 {m|으로} 이겼다.", "{region} 팀 승리"),
    ("{region} 지하철 {line}호선이 선로 점검으로 내일 운행을 멈춘다.", "{region} 지하철 {line}호선 운행 중단"),
    ("{region}시가 다음 달부터 공공 자전거 요금을 내린다.", "{region} 공공 자전거 요금 인하"),
    ("올해 {region} 벚꽃은 평년보다 {n}일 빠르게 필 전망이다.", "{region} 벚꽃 개화 빨라져"),
    ("{region} 시립도서관이 다음 주부터 밤 10시까지 문을 연다.", "{region} 도서관 운영 시간 연장"),
]


def finance_answer(is_stock_related: bool, positive: List[str] = (), negative: List[str] = (), summary: str = "") -> str:
    """The assistant text: a compact JSON object (json.loads parses it)."""
    if is_stock_related:
        answer = {"is_stock_related": True, "positive_impact_stocks": list(positive),
                  "negative_impact_stocks": list(negative)}
    else:
        answer = {"is_stock_related": False, "summary": summary}
    return json.dumps(answer, ensure_ascii=False)


def finance_record(rng: random.Random) -> Dict:
    """One finance record: about three in four name companies, the rest are unrelated everyday news."""
    numbers = {"q": str(rng.randint(1, 4)), "p": str(rng.randint(3, 29)), "n": str(rng.randint(2, 9)),
               "m": str(rng.randint(0, 1)), "line": str(rng.randint(1, 9))}
    if rng.random() < 0.75:
        template, gains, loses = rng.choice(STOCK_TEMPLATES)
        a, b = rng.sample(sorted(SECTORS[rng.choice(sorted(SECTORS))]), 2)
        values = {**numbers, "A": a, "B": b, "product": rng.choice(COMPANIES[a]), "country": rng.choice(COUNTRIES)}
        text = fill(template, values)
        answer = finance_answer(True, [values[s] for s in gains], [values[s] for s in loses])
    else:
        template, summary = rng.choice(OTHER_TEMPLATES)
        numbers["n"] = str(int(numbers["n"]) + 1)  # a score like 3대 1 always has the winner ahead
        values = {**numbers, "region": rng.choice(REGIONS), "weather": rng.choice(WEATHER),
                  "festival": rng.choice(FESTIVALS)}
        text, answer = fill(template, values), finance_answer(False, summary=fill(summary, values))
    return {"system_prompt": FINANCE_SYSTEM_PROMPT, "user_prompt": text, "assistant": answer}


# ----------------------------------------------------------------------------------------------------------------------
# Splitting and writing
# ----------------------------------------------------------------------------------------------------------------------


def unique_records(make: Callable[[random.Random], Dict | None], rng: random.Random, count: int, key: str,
                   max_draws: int = 100_000) -> List[Dict]:
    """`count` records from `make` whose `key` field is unique; fails if the templates cannot give that many."""
    records, seen = [], set()
    for _ in range(max_draws):
        record = make(rng)
        if record is not None and record[key] not in seen:
            seen.add(record[key])
            records.append(record)
            if len(records) == count:
                return records
    raise RuntimeError(f"only {len(records)} distinct '{key}' values after {max_draws} draws; add templates or words")


def split(records: List[Dict], n_eval: int) -> Tuple[List[Dict], List[Dict]]:
    """First len-n_eval records for training, the rest held out (records are already in random order and unique)."""
    return records[: len(records) - n_eval], records[len(records) - n_eval:]


def write_jsonl(path: Path, records: List[Dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


README = """# Korean demo data / 한국어 데모 데이터 (synthetic, 합성 데이터)

- keywords_train.jsonl ({kt}), keywords_eval.jsonl ({ke}): seed 001 alpaca format `{{"instruction", "input", "output": [keywords]}}`. 의약품 문장에서 키워드(성분·효능·증상·제형·대상·회사) 추출, 등장 순서대로.
- finance_train.jsonl ({ft}), finance_eval.jsonl ({fe}): seed 002 columns format `{{"system_prompt", "user_prompt", "assistant"}}`; assistant is JSON text. 뉴스가 종목 관련이면 호재/악재 종목 목록, 아니면 짧은 요약.
- Related: `{{"is_stock_related": true, "positive_impact_stocks": [..], "negative_impact_stocks": [..]}}`; unrelated: `{{"is_stock_related": false, "summary": ".."}}`.
- Generated from templates and small vocabularies with a fixed seed ({seed}): `python scripts/make_demo_data.py`. 같은 시드는 항상 같은 파일을 만듭니다.
- All company names are invented; medicine sentences pair ingredients only with their usual indications. 회사명은 모두 가상입니다.
- Train and eval files share no input text (학습/평가 입력 중복 없음). Eval files are the held-out split for `launch eval`.
- Sized for a LoRA demo of SmolLM2-135M-Instruct on a 2-core CPU: short sentences, compact outputs.
- Not real medical or financial information. 실제 의약품·금융 정보가 아닙니다.
"""


def make_demo_data(out: Path, seed: int = DEFAULT_SEED) -> Dict[str, int]:
    """Write the four jsonl files and README.md into `out`; return the number of records per file."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    keywords_train, keywords_eval = split(unique_records(keyword_record, rng, N_TRAIN + N_EVAL, "input"), N_EVAL)
    finance_train, finance_eval = split(unique_records(finance_record, rng, N_TRAIN + N_EVAL, "user_prompt"), N_EVAL)
    files = {"keywords_train.jsonl": keywords_train, "keywords_eval.jsonl": keywords_eval,
             "finance_train.jsonl": finance_train, "finance_eval.jsonl": finance_eval}
    for name, records in files.items():
        write_jsonl(out / name, records)
    (out / "README.md").write_text(README.format(kt=len(keywords_train), ke=len(keywords_eval), ft=len(finance_train),
                                                 fe=len(finance_eval), seed=seed), encoding="utf-8")
    return {name: len(records) for name, records in files.items()}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "demo", help="output folder (data/demo)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (same seed, same files)")
    args = parser.parse_args(argv)
    for name, count in make_demo_data(args.out, args.seed).items():
        print(f"{args.out / name}: {count} records")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
