"""The generated Korean chat corpus every benchmark trains or prepares: deterministic, shaped like the users' seeds:
short keyword extraction samples (seed 001), long system prompts with finance news (seed 002), RAFT samples with
several passages and distractors (seed 003), multi-turn M&A QA with a system prompt (seed 004), and short chit-chat
from the `chatterbot_corpus` Korean data. Lengths run from a few tokens to several thousand (long-tailed)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict, List, Optional

SEED = 20261121


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
