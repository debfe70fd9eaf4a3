"""The dataset doctor (``tuwen data check``): what is wrong with the data, before training.

For every source and split of a config it counts images, captions, questions and
conversations; finds missing, unreadable and suspiciously tiny images, empty and duplicate
captions, conversations that cannot be trained on (``readers_llava.conversation_problems``:
empty turns, an ``<image>`` count that is not one, turns not alternating human/gpt, no
closing gpt turn; each named by its sample id); measures
caption/question token lengths against ``data.max_text_length`` (with the tokenizer a run
would train); looks for leakage, the same image id or the same image bytes in two splits;
and measures how much of the VQA answers the answer vocabulary covers. Errors (leakage,
missing/unreadable images above ``data.max_bad_fraction``, unparseable annotations, texts
truncated away entirely) make the check fail; the rest are warnings.
"""

from __future__ import annotations

import io
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from tuwen.config import Config, SourceConfig
from tuwen.data.answers import AnswerVocab
from tuwen.data.dataset import join_by_image
from tuwen.data.embedded import content_hash
from tuwen.data.prepare import cache_dir, check_root
from tuwen.data.readers_wds import iter_shard
from tuwen.data.records import Conversation, VQAItem
from tuwen.data.sources import read_source
from tuwen.data.text import TextNormalizer
from tuwen.data.tokenizer import train_tokenizer
from tuwen.errors import DataError

EXAMPLES = 5  # file names kept per kind of problem
LOW_COVERAGE = 0.9  # answer coverage below this is a warning


@dataclass
class ImageItem:
    """One image with its texts, from a record source (a file) or a shard (bytes)."""

    name: str
    image_id: object
    data: Path | bytes
    captions: tuple[str, ...]
    questions: tuple[VQAItem, ...] = ()


@dataclass
class Part:
    """The findings for one source and one split."""

    source: str
    split: str
    format: str
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    lengths: dict[str, list[int]] = field(default_factory=lambda: {"caption": [],
                                                                     "question": []})
    texts: dict[str, list[str]] = field(default_factory=lambda: {"caption": [], "question": []})
    answers: list[str] = field(default_factory=list)
    coverage: float | None = None  # % of questions whose answer is in the answer vocabulary
    error: str | None = None

    def note(self, kind: str, name: str, n: int = 1) -> None:
        self.counts[kind] += n
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(name)


# --- reading ---------------------------------------------------------------------------------


def source_items(source: SourceConfig, split: str, config: Config,
                 part: Part) -> list[ImageItem] | Iterator[ImageItem]:
    """The source's images for ``split``, files not checked (the doctor checks them)."""
    data = read_source(source, check_root(config.data), split, cache_dir(config.data),
                       stream=True, check_files=False)
    for reason in data.labels.skipped:
        kind = ("bad_conversations" if source.format == "llava" else
                "empty_captions" if "empty caption" in reason else "skipped")
        part.note(kind, reason)
    if data.stream is not None:
        return _shard_items(data.stream, part)
    items = [ImageItem(str(ex.image_path), ex.image_id, ex.image_path, ex.captions, ex.questions)
             for ex in join_by_image(data.labels.captions, data.labels.questions)]
    return items + conversation_items(data.labels.conversations, part)


def conversation_items(conversations: list[Conversation], part: Part) -> list[ImageItem]:
    """Each conversation's image, named by its sample id (a missing one is reported so)."""
    part.counts["conversations"] += len(conversations)
    part.counts["text_only_conversations"] += sum(c.image_path is None for c in conversations)
    return [ImageItem(f"sample {c.conversation_id!r} ({c.image_path})", c.image_id,
                      c.image_path, ()) for c in conversations if c.image_path is not None]


def _shard_items(stream, part: Part) -> Iterator[ImageItem]:
    for shard in stream.shards:
        for s in iter_shard(shard, stream.caption_key):
            if s.problem is not None:
                part.note("empty_captions" if s.problem == "empty caption" else "skipped",
                          f"{s.name}: {s.problem}")
            if s.image is not None:  # no id: shard keys often restart per split
                yield ImageItem(s.name, None, s.image, s.captions)


# --- images ----------------------------------------------------------------------------------


def inspect_image(item: ImageItem) -> tuple[str, tuple[int, int] | None, str | None]:
    """(status, (width, height), content hash); status "ok", "missing" or "unreadable"."""
    data = item.data
    if isinstance(data, Path):
        try:
            data = data.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return "missing", None, None
    if not data:
        return "unreadable", None, None
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            image.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale; damage still shows
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return "unreadable", None, content_hash(data)
    return "ok", size, content_hash(data)


@dataclass
class Leaks:
    """Where each image id (per source) and each image content was seen."""

    ids: dict[tuple[str, object], set[str]] = field(default_factory=lambda: defaultdict(set))
    hashes: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))

    def add(self, part: Part, item: ImageItem, digest: str | None) -> None:
        if item.image_id is not None:
            self.ids[(part.source, item.image_id)].add(part.split)
        if digest is not None:
            self.hashes[digest].setdefault(part.split, item.name)

    def found(self) -> dict[str, list[dict]]:
        ids = [{"source": s, "image_id": i, "splits": sorted(splits)}
               for (s, i), splits in self.ids.items() if len(splits) > 1]
        content = [{"hash": h, "splits": sorted(where), "files": [where[s] for s in sorted(where)]}
                   for h, where in self.hashes.items() if len(where) > 1]
        return {"image_id": ids, "content": content}


def check_item(item: ImageItem, part: Part, leaks: Leaks, min_side: int,
               inspected: dict[Path, tuple]) -> None:
    """Count ``item`` into ``part``; ``inspected`` remembers files other sources share."""
    if isinstance(item.data, Path):
        if item.data not in inspected:
            inspected[item.data] = inspect_image(item)
        status, size, digest = inspected[item.data]
    else:
        status, size, digest = inspect_image(item)
    part.counts["images"] += 1
    if status != "ok":
        part.note(status, item.name)
    elif min(size) < min_side:
        part.note("tiny", f"{item.name} ({size[0]}x{size[1]})")
    leaks.add(part, item, digest)
    part.counts["captions"] += len(item.captions)
    part.counts["questions"] += len(item.questions)
    seen = Counter(c.strip().lower() for c in item.captions)
    for text, n in seen.items():
        if n > 1:
            part.note("duplicate_captions", f"{item.name}: {text!r} x{n}", n - 1)
    part.texts["caption"].extend(item.captions)
    part.texts["question"].extend(q.question for q in item.questions)
    part.answers.extend(q.multiple_choice_answer for q in item.questions)


# --- texts -----------------------------------------------------------------------------------


def measure_texts(parts: list[Part], config: Config) -> None:
    """Token lengths with the tokenizer a run would train on the training split."""
    data = config.data
    normalize = TextNormalizer.from_config(data.text)
    clean = {t: normalize(t) for p in parts for kind in ("caption", "question")
             for t in set(p.texts[kind])}  # datasets repeat texts a lot: normalise each once
    train_texts = [clean[t] for p in parts if p.split == data.train_split
                   for kind in ("caption", "question") for t in p.texts[kind]]
    if not train_texts:
        return
    tok = train_tokenizer(train_texts, vocab_size=data.tokenizer.vocab_size)
    for part in parts:
        # the caption decoder reserves one position ([BOS]/[EOS]); encoders [CLS] + [SEP]
        for kind, reserved in (("caption", 1), ("question", None)):
            texts = part.texts[kind]
            counts = kept_counts(tok, [clean[t] for t in texts], data.max_text_length, reserved)
            for text, (n, kept) in zip(texts, counts):
                part.lengths[kind].append(n)
                if kept == 0:
                    part.note(f"{kind}_truncated_away", repr(text))
                elif kept < n:
                    part.counts[f"{kind}_truncated"] += 1


def kept_counts(tok, texts: list[str], max_length: int,
                reserved: int | None = None) -> list[tuple[int, int]]:
    """(tokens, tokens kept) per text: ``text.kept_token_count``'s rule, tokenised in one
    batch per distinct text (one call per text is most of the doctor's time otherwise)."""
    if reserved is None:
        reserved = tok.num_special_tokens_to_add(pair=False)
    unique = list(dict.fromkeys(texts))
    ids = tok(unique, add_special_tokens=False)["input_ids"] if unique else []
    length = {t: len(x) for t, x in zip(unique, ids)}
    room = max(0, max_length - reserved)
    return [(length[t], min(length[t], room)) for t in texts]


def length_summary(lengths: list[int], max_length: int) -> dict | None:
    if not lengths:
        return None
    step = max(1, max_length // 8)
    last = max_length // step  # the bin of texts at or over the limit
    hist = Counter(min(n // step, last) for n in lengths)
    bins = {(f"{b * step}-{b * step + step - 1}" if b < last else f">={b * step}"): hist[b]
            for b in range(last + 1)}
    ordered = sorted(lengths)
    return {"mean": round(sum(lengths) / len(lengths), 2),
            "p95": ordered[int(0.95 * (len(ordered) - 1))], "max": ordered[-1],
            "histogram": bins}


def answer_coverage(parts: list[Part], config: Config) -> None:
    train = [a for p in parts if p.split == config.data.train_split for a in p.answers]
    if not train:
        return
    vocab = AnswerVocab.build(train, config.data.answer_vocab_size)
    for part in parts:
        if part.answers:
            part.coverage = round(100 * vocab.coverage(part.answers), 2)


# --- the check -------------------------------------------------------------------------------


def check_splits(config: Config) -> list[str]:
    """The splits a run touches: training, validation, evaluation."""
    return list(dict.fromkeys([config.data.train_split, config.data.val_split,
                               *config.eval.splits]))


def check_data(config: Config, *, splits: list[str] | None = None, min_side: int | None = None,
               show_progress: bool = True) -> dict:
    """Examine every source and split; the report (also what ``check.json`` holds)."""
    min_side = min_side if min_side is not None else max(8, config.data.image_size // 4)
    parts, leaks, inspected = [], Leaks(), {}
    for split in splits or check_splits(config):
        for source in config.data.sources:
            if source.split_names(split):
                parts.append(examine(source, split, config, (leaks, inspected), min_side,
                                     show_progress))
    measure_texts([p for p in parts if p.error is None], config)
    answer_coverage(parts, config)
    return judge(parts, leaks.found(), config, min_side)


def examine(source: SourceConfig, split: str, config: Config, seen: tuple[Leaks, dict],
            min_side: int, show_progress: bool) -> Part:
    part = Part(source.name, split, source.format)
    try:
        items = source_items(source, split, config, part)
        for item in tqdm(items, desc=f"hashing {source.name}/{split}", unit="img",
                         disable=not show_progress, leave=False):
            check_item(item, part, seen[0], min_side, seen[1])
    except DataError as err:
        part.error = str(err)
    return part


def judge(parts: list[Part], leakage: dict, config: Config, min_side: int) -> dict:
    errors, warnings = [], []
    for part in parts:
        e, w = part_findings(part, config.data.max_bad_fraction)
        errors += e
        warnings += w
    for leak in leakage["image_id"]:
        errors.append(f"leakage: {leak['source']} image id {leak['image_id']!r} is in splits "
                      f"{', '.join(leak['splits'])}")
    for leak in leakage["content"]:
        errors.append(f"leakage: the same image bytes are in splits {', '.join(leak['splits'])}: "
                      + ", ".join(leak["files"]))
    return {"ok": not errors, "errors": errors, "warnings": warnings,
            "max_text_length": config.data.max_text_length,
            "max_bad_fraction": config.data.max_bad_fraction, "min_side": min_side,
            "parts": [part_record(p, config.data.max_text_length) for p in parts],
            "leakage": leakage}


def part_findings(part: Part, max_bad: float) -> tuple[list[str], list[str]]:
    where, c = f"{part.source}/{part.split}", part.counts
    if part.error is not None:
        return [f"{where}: unparseable: {part.error}"], []
    errors, warnings = [], []
    bad = c["missing"] + c["unreadable"]
    if bad:
        first = (part.examples["missing"] + part.examples["unreadable"])[0]
        message = (f"{where}: {c['missing']} missing and {c['unreadable']} unreadable of "
                   f"{c['images']} images (first: {first})")
        if bad > max_bad * c["images"]:
            errors.append(f"{message}, more than data.max_bad_fraction={max_bad}")
        else:
            warnings.append(message)
    for kind in ("caption", "question"):
        if c[f"{kind}_truncated_away"]:
            errors.append(f"{where}: {c[f'{kind}_truncated_away']} {kind}(s) have no token left "
                          f"after truncation to data.max_text_length (first: "
                          f"{part.examples[f'{kind}_truncated_away'][0]})")
        if c[f"{kind}_truncated"]:
            warnings.append(f"{where}: {c[f'{kind}_truncated']} {kind}(s) longer than "
                            "data.max_text_length are cut")
    for kind, label in (("tiny", "tiny images"), ("empty_captions", "empty captions"),
                        ("duplicate_captions", "duplicate captions of one image"),
                        ("bad_conversations", "conversations that cannot be trained on "
                                              "(left out)"),
                        ("skipped", "other unusable records")):
        if c[kind]:
            warnings.append(f"{where}: {c[kind]} {label} (first: {part.examples[kind][0]})")
    if part.coverage is not None and part.coverage < 100 * LOW_COVERAGE:
        warnings.append(f"{where}: the answer vocabulary covers {part.coverage}% of the answers")
    return errors, warnings


COUNTS = ("images", "captions", "questions", "missing", "unreadable", "tiny", "empty_captions",
          "duplicate_captions", "skipped", "caption_truncated", "caption_truncated_away",
          "question_truncated", "question_truncated_away", "conversations",
          "text_only_conversations", "bad_conversations")


def part_record(part: Part, max_length: int) -> dict:
    return {"source": part.source, "split": part.split, "format": part.format,
            **{k: part.counts[k] for k in COUNTS},
            "answer_coverage": part.coverage,
            "caption_tokens": length_summary(part.lengths["caption"], max_length),
            "question_tokens": length_summary(part.lengths["question"], max_length),
            "examples": {k: v for k, v in part.examples.items() if v}, "error": part.error}
