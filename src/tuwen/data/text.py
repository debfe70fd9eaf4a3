"""Text normalisation for captions, questions and answers before they are tokenised.

``TextNormalizer`` applies ``data.text``: whitespace is always tidied; lower-casing,
punctuation removal, a word limit and (for the retrieval text input only) stop-word removal
are options. ``kept_token_count`` / ``fully_truncated`` tell whether a text survives the
tokenizer's max-length truncation: a caption or answer cut away entirely is a sample that
trains on nothing, which the dataset doctor reports as an error.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from tuwen.config import TextConfig

# English function words that say nothing about what a picture shows. Words that do are
# deliberately absent, unlike in NLTK's or scikit-learn's lists: spatial words (on, under,
# above, left, top, ...), negations (no, not, without), numbers and quantities (one, two,
# few, both, all, ...), "with", and colours. "a dog on a sofa" and "a dog under a sofa"
# must stay different queries.
ENGLISH_STOP_WORDS: frozenset[str] = frozenset("""
a an the
i me my mine myself we us our ours ourselves you your yours yourself yourselves
he him his himself she her hers herself it its itself they them their theirs themselves
this that these those what which who whom whose
am is are was were be been being have has had having do does did doing
will would shall should can could may might must
and or but if because as so than then too very just also
of to for at by from about
there here again once only own same such
""".split())

_APOSTROPHES = "'\u2019"  # ASCII and typographic


@lru_cache(maxsize=1 << 17)
def normalize_whitespace(text: str) -> str:
    """Runs of any whitespace (tabs, newlines, no-break spaces) -> one space; ends trimmed;
    invisible control and format characters (e.g. zero-width spaces) removed. Memoised:
    training normalises the same captions and questions every epoch."""
    visible = "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch)[0] != "C")
    return " ".join(visible.split())


def strip_punctuation(text: str) -> str:
    """Every punctuation character (Unicode category P) becomes a space, except an
    apostrophe inside a word, which is dropped ("man's" -> "mans"), and a point or comma
    between digits ("3.5", "1,000"). Unicode counts & # % @ * as punctuation; symbols
    such as + = $ are not, and stay."""
    out = []
    for i, ch in enumerate(text):
        if not unicodedata.category(ch).startswith("P"):
            out.append(ch)
            continue
        before, after = text[i - 1: i], text[i + 1: i + 2]
        if ch in _APOSTROPHES and before.isalnum() and after.isalpha():
            continue
        out.append(ch if ch in ".," and before.isdigit() and after.isdigit() else " ")
    return normalize_whitespace("".join(out))


def remove_stopwords(text: str, stopwords: frozenset[str] = ENGLISH_STOP_WORDS) -> str:
    """Drop the words in ``stopwords`` (compared lower-cased, ignoring punctuation around a
    word). A text made only of stop words is returned unchanged rather than emptied."""
    words = text.split()
    kept = [w for w in words if _bare(w) not in stopwords]
    return " ".join(kept) if kept else " ".join(words)


def _bare(word: str) -> str:
    start, end = 0, len(word)
    while start < end and unicodedata.category(word[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(word[end - 1]).startswith("P"):
        end -= 1
    return word[start:end].lower()


def truncate_words(text: str, max_words: int) -> str:
    """The first ``max_words`` whitespace-separated words (BLIP's ``max_words``)."""
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    return " ".join(text.split()[:max_words])


@dataclass(frozen=True)
class TextNormalizer:
    """``data.text`` as a function. ``__call__`` is for every text (captions the decoder
    learns, questions, retrieval queries); ``retrieval`` is for the text encoder's input
    of ITC/ITM, which alone may drop stop words."""

    lowercase: bool = True
    strip_punctuation: bool = False
    stopwords_for_retrieval: bool = False
    max_words: int | None = None
    stopwords: frozenset[str] = ENGLISH_STOP_WORDS

    @classmethod
    def from_config(cls, config: TextConfig) -> TextNormalizer:
        return cls(**config.model_dump())

    def __call__(self, text: str) -> str:
        return self._limit(self._clean(text))

    def retrieval(self, text: str) -> str:
        text = self._clean(text)
        if self.stopwords_for_retrieval:
            text = remove_stopwords(text, self.stopwords)
        return self._limit(text)

    def _clean(self, text: str) -> str:
        text = normalize_whitespace(text)
        if self.lowercase:
            text = text.lower()
        if self.strip_punctuation:
            text = strip_punctuation(text)
        return text

    def _limit(self, text: str) -> str:
        return truncate_words(text, self.max_words) if self.max_words else text


def kept_token_count(tokenizer, text: str, max_length: int, *, prefix: str | None = None,
                     reserved: int | None = None) -> int:
    """How many of ``text``'s tokens survive truncation to ``max_length``.

    ``reserved`` positions go to special tokens (default: what the tokenizer adds to one
    sequence, e.g. 2 for BERT's [CLS] ... [SEP]; tuwen's caption decoder uses 1, for its
    [BOS]/[EOS]). ``prefix`` is text placed before ``text`` in the same sequence, such as
    the question before a generated answer: its tokens are kept first.
    """
    if reserved is None:
        reserved = tokenizer.num_special_tokens_to_add(pair=False)
    n_prefix = len(_ids(tokenizer, prefix)) if prefix else 0
    room = max(0, max_length - reserved - n_prefix)
    return min(len(_ids(tokenizer, text)), room)


def fully_truncated(tokenizer, text: str, max_length: int, *, prefix: str | None = None,
                    reserved: int | None = None) -> bool:
    """True when nothing of ``text`` reaches the model: it is empty after tokenisation, or
    the special tokens and ``prefix`` fill all ``max_length`` positions."""
    return kept_token_count(tokenizer, text, max_length, prefix=prefix, reserved=reserved) == 0


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]
