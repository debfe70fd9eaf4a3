"""VQA answer normalisation (the official VQAv2 rules) and the answer vocabulary.

``normalize_answer`` reproduces ``processPunctuation`` followed by ``processDigitArticle``
from the official evaluation script (``vqaEval.py``, Agrawal et al., GT-Vision-Lab/VQA,
master), quirks included, so that a classifier's answer classes, its training targets and
the accuracy reported by :mod:`tuwen.tasks.metrics.vqa_accuracy` all agree with the number a
paper would report. The quirks kept on purpose:

* each punctuation mark is *deleted* everywhere if one of its occurrences touches a space
  in the original text, and replaced by a space otherwise (``"red, blue"`` -> ``"red blue"``,
  ``"red,blue"`` -> ``"red blue"``, ``"x-ray"`` -> ``"x ray"``); a digit-comma-digit group
  anywhere (``"1,000"``) makes every mark deleted (``"1,000"`` -> ``"1000"``);
* the period-stripping regex is ``(?!<=\\d)(\\.)(?!\\d)``: the ``(?!<=\\d)`` is a mistyped
  look-behind that never fires, so every period not followed by a digit goes
  (``"3.5"`` stays, ``"yes."`` -> ``"yes"``); and the call passes ``re.UNICODE`` (= 32) as the
  *count* argument of ``sub``, so at most 32 periods are removed;
* the apostrophe is not in the punctuation list, and contraction keys such as ``"Im"`` and
  ``"Ive"`` are capitalised, so after lower-casing they never match (``"im"`` stays ``"im"``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path

from tuwen import fsio
from tuwen.errors import DataError, TuwenError

# Copied verbatim from vqaEval.py (including its odd entries): the table is part of the metric.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
)
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# vqaEval.py calls periodStrip.sub("", text, re.UNICODE): the flag lands in `count`.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``: drop or space out punctuation, strip periods."""
    out = text
    has_digit_comma = COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        # The test reads the original text on purpose (official behaviour), not `out`.
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower-case, number words to digits, no articles,
    then restore apostrophes in known contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


@lru_cache(maxsize=1 << 16)
def normalize_answer(ans: str) -> str:
    """Normalise an answer exactly as the official VQAv2 evaluation does. Memoised: answers
    repeat (ten per question, mostly the same few words), and this was half of a shapes
    batch's collate time."""
    return process_digit_article(process_punctuation(ans))


class AnswerVocab:
    """The answer classes of a VQA classifier: normalised answer strings and their indices."""

    def __init__(self, answers: Sequence[str]) -> None:
        self._answers = list(answers)
        self._index = {a: i for i, a in enumerate(self._answers)}
        if len(self._index) != len(self._answers):
            dup = next(a for a, n in Counter(self._answers).items() if n > 1)
            raise TuwenError(f"answer vocabulary has a duplicate answer: {dup!r}")

    @classmethod
    def build(cls, multiple_choice_answers: Iterable[str], top_k: int) -> AnswerVocab:
        """Keep the ``top_k`` most frequent normalised answers (ties: alphabetical)."""
        if top_k < 1:
            raise TuwenError(f"answer vocabulary top_k must be at least 1, got {top_k}")
        counts = Counter(normalize_answer(a) for a in multiple_choice_answers)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls([a for a, _ in ranked[:top_k]])

    @property
    def answers(self) -> tuple[str, ...]:
        return tuple(self._answers)

    def __len__(self) -> int:
        return len(self._answers)

    def __iter__(self) -> Iterator[str]:
        return iter(self._answers)

    def __contains__(self, answer: object) -> bool:
        return isinstance(answer, str) and self.index(answer) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AnswerVocab) and self._answers == other._answers

    def __repr__(self) -> str:
        return f"AnswerVocab({len(self)} answers)"

    def index(self, answer: str) -> int | None:
        """The class index of ``answer`` after normalisation, or None if it is not a class."""
        return self._index.get(normalize_answer(answer))

    def answer(self, i: int) -> str:
        if not 0 <= i < len(self._answers):
            raise IndexError(f"answer index {i} out of range for {len(self)} answers")
        return self._answers[i]

    def soft_scores(self, answers: Sequence[str]) -> dict[int, float]:
        """VQAv2 soft targets: ``min(1, count / 3)`` per vocabulary answer among the
        (normalised) annotator answers; answers outside the vocabulary are dropped."""
        counts = Counter(normalize_answer(a) for a in answers)
        return {
            self._index[a]: min(1.0, n / 3) for a, n in counts.items() if a in self._index
        }

    def coverage(self, multiple_choice_answers: Iterable[str]) -> float:
        """Share of answers (normalised) that are vocabulary classes: the accuracy ceiling."""
        answers = list(multiple_choice_answers)
        if not answers:
            raise TuwenError("answer coverage needs at least one answer")
        return sum(self.index(a) is not None for a in answers) / len(answers)

    def save(self, path: str | Path) -> None:
        """Write ``{"answers": [...]}`` as UTF-8 JSON (conventionally ``answer_vocab.json``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"answers": self._answers}, ensure_ascii=False, indent=0)
        fsio.write_text(path, text + "\n")

    @classmethod
    def load(cls, path: str | Path) -> AnswerVocab:
        """Read a file written by :meth:`save`; malformed content is a ``DataError``."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(path, "answer vocabulary file not found") from None
        except UnicodeDecodeError as err:
            raise DataError(path, f"not UTF-8 text ({err.reason})") from None
        except json.JSONDecodeError as err:
            raise DataError(path, f"not valid JSON ({err.msg} at line {err.lineno})") from None
        if not isinstance(data, dict) or not isinstance(data.get("answers"), list):
            raise DataError(path, 'expected an object {"answers": [...]}', key="answers")
        answers = data["answers"]
        for i, a in enumerate(answers):
            if not isinstance(a, str):
                raise DataError(path, f"answer {i} is {type(a).__name__}, expected a string",
                                key="answers")
        dups = [a for a, n in Counter(answers).items() if n > 1]
        if dups:
            raise DataError(path, f"duplicate answer {dups[0]!r}", key="answers")
        return cls(answers)
