"""Captions and VQA questions for a shapes scene, from a small fixed grammar.

The grammar is deliberately rigid: a small model must learn to produce the captions,
and text -> image retrieval must be able to tell scenes apart from their words alone.
Objects always come in reading order (top row first, then left to right).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tuwen.data.shapes_scene import (
    ALL_PAIRS,
    COLOURS,
    GRID,
    HELD_OUT_PAIRS,
    SHAPES,
    ShapeObject,
)

POSITION_NAMES: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three")
VARIANT_COUNT_PROBS = (0.5, 0.35, 0.15)  # how many of the 10 answers are surface variants


# ---------------------------------------------------------------- captions


def with_article(words: str) -> str:
    """'a red circle', 'an orange circle': the captions are meant to be read."""
    return ("an " if words[0] in "aeiou" else "a ") + words


def _phrase(obj: ShapeObject, *, with_size: bool = True) -> str:
    words = f"{obj.size} {obj.colour} {obj.shape}" if with_size else f"{obj.colour} {obj.shape}"
    return with_article(words)


def _where(obj: ShapeObject) -> str:
    return f"in the {POSITION_NAMES[obj.row * GRID + obj.col]}"


def _join(parts: list[str]) -> str:
    """'a', 'a and b', 'a, b and c' - the one joining rule every template shares."""
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _relation_caption(objects: list[ShapeObject]) -> str:
    first = objects[0]
    if len(objects) == 1:
        return f"a single {first.size} {first.colour} {first.shape} {_where(first)}"
    second = objects[1]
    # Reading order puts `first` above or left of `second`, but not both: a top-right
    # object comes before a bottom-left one, so "to the right of" is needed too.
    if first.col < second.col:
        relation = "to the left of"
    elif first.col > second.col:
        relation = "to the right of"
    else:
        relation = "above"
    text = f"{_phrase(first)} {relation} {_phrase(second)}"
    for obj in objects[2:]:
        text += f" and {_phrase(obj)} {_where(obj)}"
    return text


def make_captions(objects: list[ShapeObject]) -> list[str]:
    """Five captions, one per template: list, count, positions, relation, short."""
    phrases = [_phrase(o) for o in objects]
    n = len(objects)
    count = f"there {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} shape{'' if n == 1 else 's'}"
    return [
        _join(phrases),
        f"{count}: {_join(phrases)}",
        _join([f"{_phrase(o)} {_where(o)}" for o in objects]),
        _relation_caption(objects),
        _join([_phrase(o, with_size=False) for o in objects]),
    ]


def tokenize_caption(raw: str) -> list[str]:
    """Karpathy-style tokens: lowercase words, punctuation dropped."""
    return raw.lower().replace(",", " ").replace(":", " ").split()


# ---------------------------------------------------------------- questions


@dataclass(frozen=True)
class Question:
    question: str
    question_type: str  # colour, shape, count, exists, relative_position, relative_direction
    answer_type: str  # VQAv2's: "yes/no", "number", "other"
    answer: str  # canonical, already in VQA-normalised form


def _count_matching(objects: list[ShapeObject], **attrs: str) -> int:
    return sum(all(getattr(o, k) == v for k, v in attrs.items()) for o in objects)


def _pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def _unique_name(objects: list[ShapeObject], o: ShapeObject, attr: str) -> str | None:
    """``o``'s ``attr`` value ("circle"), or size + value ("small circle"), if that alone
    names it."""
    value = getattr(o, attr)
    if _count_matching(objects, **{attr: value}) == 1:
        return value
    if _count_matching(objects, **{attr: value, "size": o.size}) == 1:
        return f"{o.size} {value}"
    return None


def _colour_question(objects: list[ShapeObject], rng: np.random.Generator) -> Question | None:
    options = [(f"what colour is the {name}?", o.colour) for o in objects
               if (name := _unique_name(objects, o, "shape")) is not None]
    if not options:
        return None
    text, answer = _pick(rng, options)
    return Question(text, "colour", "other", answer)


def _shape_question(objects: list[ShapeObject], rng: np.random.Generator) -> Question | None:
    options = [(f"what shape is the {name} object?", o.shape) for o in objects
               if (name := _unique_name(objects, o, "colour")) is not None]
    if not options:
        return None
    text, answer = _pick(rng, options)
    return Question(text, "shape", "other", answer)


def _count_question(objects: list[ShapeObject], rng: np.random.Generator) -> Question:
    kind = int(rng.integers(3))
    if kind == 0:
        return Question("how many shapes are there?", "count", "number", str(len(objects)))
    # Half the time ask about something absent, so "0" is a real answer.
    present = rng.random() < 0.5
    if kind == 1:
        shape = _pick(rng, [o.shape for o in objects] if present else list(SHAPES))
        text, n = f"how many {shape}s are there?", _count_matching(objects, shape=shape)
    else:
        colour = _pick(rng, [o.colour for o in objects] if present else list(COLOURS))
        text, n = f"how many {colour} shapes are there?", _count_matching(objects, colour=colour)
    return Question(text, "count", "number", str(n))


def _exists_question(objects: list[ShapeObject], rng: np.random.Generator, *,
                     allow_held_out: bool, asked: list[str]) -> Question | None:
    """A yes or a no with equal odds; None unless both are still unasked.

    Offering "no" when every "yes" is used up would tilt the dataset towards "no".
    """
    # Lists, never sets: set order of strings changes with PYTHONHASHSEED.
    present = list(dict.fromkeys((o.colour, o.shape) for o in objects))
    absent = [p for p in ALL_PAIRS
              if p not in present and (allow_held_out or p not in HELD_OUT_PAIRS)]
    pools = {answer: [text for text in (_exists_text(*p) for p in pairs) if text not in asked]
             for answer, pairs in (("yes", present), ("no", absent))}
    if not pools["yes"] or not pools["no"]:
        return None
    answer = "yes" if rng.random() < 0.5 else "no"
    return Question(_pick(rng, pools[answer]), "exists", "yes/no", answer)


def _exists_text(colour: str, shape: str) -> str:
    return f"is there {with_article(f'{colour} {shape}')}?"


_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
RELATIONS = tuple(_OPPOSITE)  # the relation words of relative-position questions


def _ordered_pairs(objects: list[ShapeObject]) -> list[tuple[ShapeObject, ShapeObject, str]]:
    """(a, b, axis) for pairs named unambiguously by colour + shape, with a strict order
    along that axis."""
    named = [o for o in objects if _count_matching(objects, colour=o.colour, shape=o.shape) == 1]
    candidates = []
    for i, a in enumerate(named):
        for b in named[i + 1:]:
            if a.col != b.col:
                candidates.append((a, b, "horizontal"))
            if a.row != b.row:
                candidates.append((a, b, "vertical"))
    return candidates


def _relative_questions(objects: list[ShapeObject], rng: np.random.Generator,
                        n_questions: int = 2, *, direction: bool = False) -> list[Question]:
    """Up to ``n_questions`` about pairs named unambiguously by colour + shape: yes/no
    ("is the red circle left of the blue square?"), or with ``direction`` GQA's "choose"
    form ("is the red circle left or right of the blue square?" -> "left")."""
    candidates = _ordered_pairs(objects)
    if not candidates:
        return []
    ask = _direction_question if direction else _relative_question
    chosen = rng.choice(len(candidates), size=min(n_questions, len(candidates)), replace=False)
    return [ask(*candidates[int(i)], rng) for i in chosen]


def _direction_question(a: ShapeObject, b: ShapeObject, axis: str,
                        rng: np.random.Generator) -> Question:
    """No relation word to flip: the answer is the comparison itself, and where the first
    object is answers most of them alone, a first step a model can learn before the yes/no
    form (docs/experiments/2026-11-29-relative-position.md)."""
    if rng.random() < 0.5:
        a, b = b, a
    if axis == "horizontal":
        choice, answer = "left or right of", "left" if a.col < b.col else "right"
    else:
        choice, answer = "above or below", "above" if a.row < b.row else "below"
    text = f"is the {a.colour} {a.shape} {choice} the {b.colour} {b.shape}?"
    return Question(text, "relative_direction", "other", answer)


def _relative_question(a: ShapeObject, b: ShapeObject, axis: str,
                       rng: np.random.Generator) -> Question:
    if rng.random() < 0.5:
        a, b = b, a
    if axis == "horizontal":
        truth = "left of" if a.col < b.col else "right of"
    else:
        truth = "above" if a.row < b.row else "below"
    # Asking the true relation or its opposite with equal odds balances yes and no.
    ask_truth = rng.random() < 0.5
    relation = truth if ask_truth else _OPPOSITE[truth]
    text = f"is the {a.colour} {a.shape} {relation} the {b.colour} {b.shape}?"
    return Question(text, "relative_position", "yes/no", "yes" if ask_truth else "no")


def make_questions(objects: list[ShapeObject], rng: np.random.Generator, *,
                   allow_held_out: bool) -> list[Question]:
    """5-9 distinct questions; ``allow_held_out`` lets "exists" name a held-out pair."""
    questions = [q for q in (_colour_question(objects, rng), _shape_question(objects, rng))
                 if q is not None]
    questions.append(_count_question(objects, rng))
    exists = _exists_question(objects, rng, allow_held_out=allow_held_out, asked=[])
    questions += [exists] if exists is not None else []
    questions.extend(_relative_questions(objects, rng))
    questions.extend(_relative_questions(objects, rng, direction=True))
    target = int(rng.integers(5, 8))
    # Pad with count / exists questions; there are dozens of distinct ones per scene,
    # so the attempt cap is only a guard against an endless loop.
    for _ in range(1000):
        if len(questions) >= target:
            break
        asked = [q.question for q in questions]
        extra = None
        if rng.random() < 0.5:
            extra = _exists_question(objects, rng, allow_held_out=allow_held_out, asked=asked)
        if extra is None:
            extra = _count_question(objects, rng)
        if extra.question not in asked:
            questions.append(extra)
    return questions


# ---------------------------------------------------------------- answers


def _surface_variants(answer: str, answer_type: str) -> list[str]:
    """Spellings the official VQA normalisation maps back to ``answer``."""
    variants = [answer.capitalize(), answer + "."]
    if answer_type == "number":
        word = NUMBER_WORDS[int(answer)]
        variants += [word, word.capitalize()]
    elif answer in SHAPES:
        variants.append(f"a {answer}")  # articles are dropped by the normalisation
    return variants


def make_answers(question: Question, rng: np.random.Generator) -> list[str]:
    """Ten human-style answers: mostly canonical, 0-2 surface variants."""
    answers = [question.answer] * 10
    n_variants = int(rng.choice(len(VARIANT_COUNT_PROBS), p=VARIANT_COUNT_PROBS))
    variants = _surface_variants(question.answer, question.answer_type)
    for slot in sorted(int(s) for s in rng.choice(10, size=n_variants, replace=False)):
        answers[slot] = _pick(rng, variants)
    return answers
