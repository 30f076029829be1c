"""`python -m launch inspect`: see what will be trained before it is, sample by sample.

For each chosen record of `data.sources`: the conversation rendered by the run's template, with the tokens that carry
a label (the loss) marked, in green in a terminal and between ⟦ and ⟧ otherwise (plain square brackets would be
ambiguous next to the JSON lists of seed 001); its token and label counts against data.max_length; and, for a sample
that will not be trained as it is, the reason (no assistant turn, a template that rewrites the reply, longer than
data.max_length and dropped or split). Then the dataset-wide reasons from the preparation's report (train/data/
report.py): rejected records by reason with examples, duplicates, overlong samples. And a warning when
data.template adds special tokens the tokenizer does not have: their embeddings start untrained.

The marked text is built from the token ids and labels that training uses (`labels.tokenize_conversations`): runs of
labelled and unlabelled tokens, each decoded, so what is marked is exactly what the loss sees.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, TextIO, Tuple

from train.config import Config, DataConfig
from train.data import IGNORE_INDEX

OPEN, CLOSE = "\u27e6", "\u27e7"  # ⟦ ⟧: the trained tokens in plain output
GREEN, DIM, RESET = "\033[1;32m", "\033[2m", "\033[0m"


@dataclass
class SampleView:
    """One conversation as training sees it: its token ids and labels, as runs of (text, trained)."""

    input_ids: List[int] = field(default_factory=list)
    labels: List[int] = field(default_factory=list)
    segments: List[Tuple[str, bool]] = field(default_factory=list)
    reason: Optional[str] = None  # why it trains nothing as it is (None: it trains)

    @property
    def tokens(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def trained_texts(self) -> List[str]:
        return [text for text, trained in self.segments if trained]


def runs(labels: List[int]) -> List[Tuple[int, int, bool]]:
    """Maximal runs [start, end) of consecutive tokens that are all labelled or all unlabelled."""
    out: List[Tuple[int, int, bool]] = []
    for i, label in enumerate(labels):
        trained = label != IGNORE_INDEX
        if out and out[-1][2] == trained:
            out[-1] = (out[-1][0], i + 1, trained)
        else:
            out.append((i, i + 1, trained))
    return out


def sample_view(tokenizer, messages: List[dict], data: DataConfig) -> SampleView:
    """The ids and labels training computes for `messages`, decoded run by run; `reason` when nothing is trained."""
    from train.data.labels import tokenize_conversations

    result = tokenize_conversations(tokenizer, [messages], data)[0]
    if isinstance(result, str):
        return SampleView(reason=result)
    ids, labels = result["input_ids"], result["labels"]
    segments = [(tokenizer.decode(ids[a:b], skip_special_tokens=False, clean_up_tokenization_spaces=False), trained)
                for a, b, trained in runs(labels)]
    return SampleView(input_ids=ids, labels=labels, segments=segments)


def marked(segments: List[Tuple[str, bool]], color: bool = False) -> str:
    """The text with the trained runs marked: green (ANSI) when `color`, else between ⟦ and ⟧."""
    if color:
        return "".join(f"{GREEN}{text}{RESET}" if trained else text for text, trained in segments)
    return "".join(f"{OPEN}{text}{CLOSE}" if trained else text for text, trained in segments)


def overlong_note(view: SampleView, data: DataConfig) -> Optional[str]:
    """What preparation does with a sample longer than data.max_length (train/data/packing.handle_overlong)."""
    from train.data.packing import handle_overlong

    if view.tokens <= data.max_length:
        return None
    chunks, counts = handle_overlong([{"input_ids": view.input_ids, "labels": view.labels}], data.max_length,
                                     data.overlong)
    head = f"longer than data.max_length ({view.tokens} > {data.max_length} tokens): "
    if data.overlong == "drop":
        return head + (f"dropped (data.overlong=drop), its {view.trained_tokens} trained tokens lost; raise "
                       f"data.max_length or set data.overlong=split")
    kept = len(chunks)
    return head + (f"split into {kept} chunk(s) of at most {data.max_length} tokens (data.overlong={data.overlong})"
                   + (f", {counts['chunks_without_labels']} chunk(s) without a trained token dropped"
                      if counts["chunks_without_labels"] and data.overlong == "split" else ""))


def untrained_token_warning(changes: Dict, cfg: Config) -> Optional[str]:
    """A warning when data.template added control tokens the tokenizer did not have (setup_tokenizer's
    'added_special_tokens', the new pad excluded: it never carries a label): new embedding rows that start at the
    mean embedding, all alike, so the model cannot tell them apart until they are trained, and under LoRA they are
    trained only when lora.modules_to_save includes the embeddings and the output layer."""
    from train.methods import method_of

    new = [t for t in changes.get("added_special_tokens", []) if t != changes.get("pad_token")]
    if not new:
        return None
    name = changes.get("template", cfg.data.template)
    saved = set(cfg.lora.modules_to_save)
    trained = not method_of(cfg).adapter or {"embed_tokens", "lm_head"} <= saved
    how = ("they are trained with the model" if trained else
           "under LoRA they stay untrained unless lora.modules_to_save includes embed_tokens and lm_head")
    return (f"data.template={cfg.data.template} ({name}) adds {', '.join(new)}, which the tokenizer of "
            f"{cfg.model.tokenizer_name_or_path or cfg.model.name_or_path} does not have: the model has never seen "
            f"them and their embeddings start untrained (all equal to the mean embedding); {how}. Prefer the model's "
            f"own template (data.template=tokenizer) unless you fine-tune a base model into a new format")


def iter_samples(cfg: Config) -> Iterator[Tuple[int, object, object, Optional[List[dict]], Optional[str]]]:
    """(index, source, raw record, messages or None, the record's error or None) for every record of data.sources,
    in the order they are read. Lines that are not records at all are left to the report (data.on_error)."""
    from train.data.formats import RecordError, to_messages
    from train.data.quality import Rejects
    from train.data.sources import iter_raw_records

    index = 0
    for source in cfg.data.sources:
        for raw in iter_raw_records(source, "skip", Rejects()):
            try:
                messages, error = to_messages(raw.data, source, cfg.data, seed=cfg.train.seed), None
            except RecordError as err:
                messages, error = None, str(err)
            yield index, source, raw, messages, error
            index += 1


def placement_note(digest: str, data: DataConfig, seed: int, first: Optional[int]) -> Optional[str]:
    """Where preparation puts a conversation that is not dropped for its own content: removed as an exact duplicate
    of an earlier sample `first` (data.dedup), or held out for evaluation (data.validation_split decides by a hash of
    its text, train/data/quality.split_train_eval). Near-duplicates are found over the whole data: see the report."""
    from train.data.quality import split_train_eval

    if data.dedup != "none" and first is not None:
        return f"an exact duplicate of sample {first}: removed (data.dedup={data.dedup})"
    if not data.eval_sources and data.validation_split > 0 and split_train_eval([digest], data.validation_split,
                                                                                 seed)[1]:
        return (f"held out for evaluation (data.validation_split={data.validation_split}): scored by `launch eval` "
                f"and train.eval_steps, not trained on")
    return None


def report_lines(report) -> List[str]:
    """The dataset-wide reasons samples were left out, from the preparation's DataReport."""
    lines = [f"records read: {sum(s.get('records', 0) for s in report.sources)}; conversations: "
             f"{report.train_conversations} train, {report.eval_conversations} eval"]
    if report.rejected:
        lines.append(f"rejected: {report.rejected} record(s)")
        examples = report.rejects.get("examples", {})
        for reason, count in report.rejected_by_reason.items():
            lines.append(f"  {reason}: {count}")
            lines += [f"    {example}" for example in examples.get(reason, [])[:3]]
    else:
        lines.append("rejected: none")
    dup = report.duplicates
    lines.append(f"duplicates removed ({dup.get('mode', 'exact')}): {dup.get('exact_removed', 0)} exact, "
                 f"{dup.get('near_removed', 0)} near")
    over = report.overlong
    if over.get("overlong"):
        lines.append(f"longer than data.max_length ({report.max_length}): {over['overlong']} sample(s), "
                     f"data.overlong={over.get('mode')}: {over.get('dropped', 0)} dropped, split into "
                     f"{over.get('split_into', 0)} chunk(s), {over.get('chunks_without_labels', 0)} chunk(s) without "
                     f"a trained token, {over.get('label_tokens_lost', 0)} trained token(s) lost")
    else:
        lines.append(f"longer than data.max_length ({report.max_length}): none")
    return lines


def inspect_recipe(cfg: Config, tokenizer, changes: Dict, n: int = 3, index: Optional[int] = None,
                   color: bool = False, out: Optional[TextIO] = None, report: bool = True) -> List[SampleView]:
    """Print the chosen samples (the first `n`, or only `index`), then the preparation's reasons; returns the views.
    `report`: prepare the data (the cache is reused by training) to show the dataset-wide reasons."""
    out = out or sys.stdout
    write = lambda text="": print(text, file=out)  # noqa: E731
    warning = untrained_token_warning(changes, cfg)
    if warning:
        write(f"warning: {warning}\n")
    legend = f"{GREEN}in green{RESET}" if color else f"between {OPEN} and {CLOSE}"
    write(f"template {changes.get('template')}, data.max_length {cfg.data.max_length}, data.train_on "
          f"{cfg.data.train_on}; the tokens that carry a label (the loss) are shown {legend}\n")
    from train.data.prepare import _digest  # the conversation's identity for dedup and the split, as prepared
    from train.data.quality import where

    views: List[SampleView] = []
    seen: Dict[str, int] = {}  # digest -> the first sample with it
    for i, source, raw, messages, error in iter_samples(cfg):
        digest = _digest(messages) if messages else None
        placement = placement_note(digest, cfg.data, cfg.train.seed, seen.get(digest)) if digest else None
        if digest:
            seen.setdefault(digest, i)
        if index is not None and i != index:
            continue
        head = f"── sample {i}  {where(raw.file, raw.line, raw.unit)}  ({source.format})"
        if error:
            write(f"{head}\ndropped: {error}\n")
            views.append(SampleView(reason=error))
        else:
            view = sample_view(tokenizer, messages, cfg.data)
            views.append(view)
            if view.reason:
                write(f"{head}\ndropped: {view.reason}\n")
            else:
                share = 100 * view.trained_tokens / max(view.tokens, 1)
                write(f"{head}  {view.tokens} tokens, {view.trained_tokens} trained ({share:.1f}%)")
                for note in (placement, overlong_note(view, cfg.data)):
                    if note:
                        write(f"note: {note}")
                write(marked(view.segments, color))
                write()
        if index is not None or len(views) >= n:
            break
    if index is not None and not views:
        raise_index_error(index, cfg)
    if report:
        from train.data.prepare import load_or_build

        prepared = load_or_build(cfg, tokenizer, is_main=True)
        write(f"── whole dataset (prepared in {prepared.path}; details in data_report.md after `python -m launch "
              f"prepare`)")
        for line in report_lines(prepared.report):
            write(line)
    return views


def raise_index_error(index: int, cfg: Config) -> None:
    from train.config import ConfigError

    count = sum(1 for _ in iter_samples(cfg))
    raise ConfigError(f"--index {index}: data.sources hold {count} record(s) (0 to {count - 1})")
