"""Caption metrics as the COCO caption evaluation computes them (pycocoevalcap).

With Java on PATH, ``caption_scores`` does what ``COCOEvalCap.evaluate`` does minus SPICE:
Stanford PTBTokenizer (stanford-corenlp-3.4.1, ``-preserveLines -lowerCase``) then the
punctuation filter of ``ptbtokenizer.py``, then ``Bleu(4)``, ``Meteor()``, ``Rouge()`` and
``Cider()``. Each JVM starts once: one tokenizer run serves references and predictions
together (COCOEvalCap runs two). The Java lexer reads each line on its own except for one
look past the line end (``No.`` before a line starting with a digit stays whole), so only the
last reference of the last image could tokenise differently, and only in that case.

Without Java, captions are tokenised by the pure-Python port in
:mod:`tuwen.tasks.metrics.ptb_tokenizer`, and METEOR -- which only exists as a Java jar -- is
reported as ``None`` with the reason in ``protocol``; it is never silently 0.
"""

from __future__ import annotations

import shutil
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from tuwen.errors import TuwenError
from tuwen.tasks.metrics.ptb_tokenizer import caption_line, ptb_tokenize_lines


def _check_inputs(predictions: Mapping[Hashable, str],
                  references: Mapping[Hashable, Sequence[str]]) -> None:
    missing = [k for k in references if k not in predictions]
    extra = [k for k in predictions if k not in references]
    if missing or extra:
        raise TuwenError(
            f"predictions and references must cover the same ids: {len(missing)} ids have no "
            f"prediction (e.g. {missing[:1]}), {len(extra)} predictions have no references "
            f"(e.g. {extra[:1]})")
    if not references:
        raise TuwenError("caption metrics need at least one image")
    for k, refs in references.items():
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise TuwenError(f"references for id {k!r} must be a non-empty list of strings")
        if not isinstance(predictions[k], str):
            raise TuwenError(f"prediction for id {k!r} is {type(predictions[k]).__name__}, "
                             "expected a string")


def _tokenize_java(predictions: Mapping[Hashable, str],
                   references: Mapping[Hashable, Sequence[str]],
                   ) -> tuple[dict[Hashable, list[str]], dict[Hashable, list[str]]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # One JVM for both sides (COCOEvalCap starts two): keys tagged by side. Blank captions
    # tokenise to "" and are kept out of the file: a blank last line would be lost by the
    # Java tool and misalign pycocoevalcap's (image, line) pairing.
    both: dict[Any, list[dict[str, str]]] = {}
    for k, refs in references.items():
        both[("gts", k)] = [{"caption": caption_line(r)} for r in refs]
    for k, pred in predictions.items():
        both[("res", k)] = [{"caption": caption_line(pred)}]
    to_java = {key: [c for c in caps if c["caption"].strip()] for key, caps in both.items()}
    to_java = {key: caps for key, caps in to_java.items() if caps}
    tokenized = PTBTokenizer().tokenize(to_java) if to_java else {}
    if any(len(tokenized.get(key, [])) != len(caps) for key, caps in to_java.items()):
        raise TuwenError("PTBTokenizer (java) returned fewer lines than captions given")
    lines = {key: iter(tokenized.get(key, [])) for key in both}
    out = {key: [next(lines[key]) if c["caption"].strip() else "" for c in caps]
           for key, caps in both.items()}
    gts = {k: out[("gts", k)] for k in references}
    res = {k: out[("res", k)] for k in references}
    return gts, res


def _tokenize_python(predictions: Mapping[Hashable, str],
                     references: Mapping[Hashable, Sequence[str]],
                     ) -> tuple[dict[Hashable, list[str]], dict[Hashable, list[str]]]:
    # Two "files", references then predictions, in id order, as COCOEvalCap tokenises them.
    ids = list(references)
    ref_lines = iter(ptb_tokenize_lines([r for k in ids for r in references[k]]))
    gts = {k: [next(ref_lines) for _ in references[k]] for k in ids}
    res = dict(zip(ids, ([line] for line in ptb_tokenize_lines([predictions[k] for k in ids]))))
    return gts, res


def _start_meteor() -> Any:
    from pycocoevalcap.meteor.meteor import Meteor

    # The JVM spends seconds loading its paraphrase table; start it before tokenising and
    # the Python scorers so that the two overlap.
    try:
        return Meteor()
    except OSError as err:
        raise TuwenError(f"cannot start java for METEOR: {err}") from None


def _meteor_score(meteor: Any, gts: dict[Hashable, list[str]],
                  res: dict[Hashable, list[str]]) -> float:
    try:
        score, _ = meteor.compute_score(gts, res)
    except (ValueError, OSError) as err:  # the JVM died: empty or broken replies
        raise TuwenError(f"METEOR (java meteor-1.5.jar) failed: {err}") from None
    return float(score)


def _close_meteor(meteor: Any) -> None:
    # What Meteor.__del__ does, but now rather than whenever the object is collected.
    with meteor.lock:
        meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()


def _cider(gts: dict, res: dict) -> tuple[float, list[float]]:
    """pycocoevalcap's CIDEr; references with no n-gram at all (every one empty after
    tokenization) give 0, where pycocoevalcap fails on an empty document frequency."""
    from pycocoevalcap.cider.cider import Cider

    if not any(ref.split() for refs in gts.values() for ref in refs):
        return 0.0, [0.0] * len(gts)
    return Cider().compute_score(gts, res)


def caption_scores(predictions: Mapping[Hashable, str],
                   references: Mapping[Hashable, Sequence[str]]) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr (pycocoevalcap scale) of one caption per id.

    ``predictions`` maps an image id to its generated caption, ``references`` the same ids to
    their reference captions. CIDEr's document frequencies come from these references, as in
    pycocoevalcap, so CIDEr depends on the evaluation set. Returns ``bleu_1``..``bleu_4``,
    ``meteor`` (None without Java), ``rouge_l``, ``cider``, ``per_image`` (``cider`` and
    ``bleu_4`` per id) and ``protocol`` (how the numbers were made).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.rouge.rouge import Rouge

    _check_inputs(predictions, references)
    has_java = shutil.which("java") is not None
    meteor_jvm = _start_meteor() if has_java else None
    try:
        gts, res = (_tokenize_java if has_java else _tokenize_python)(predictions, references)
        bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
        rouge, _ = Rouge().compute_score(gts, res)
        cider, cider_per_image = _cider(gts, res)
        meteor = _meteor_score(meteor_jvm, gts, res) if meteor_jvm is not None else None
    finally:
        if meteor_jvm is not None:
            _close_meteor(meteor_jvm)
    protocol: dict[str, str] = {
        "implementation": "pycocoevalcap (COCOEvalCap.evaluate without SPICE)",
        "tokenization": "ptb-java" if has_java else "ptb-python",
        "bleu": "corpus-level, closest reference length",
        "cider": "CIDEr-D as pycocoevalcap Cider (n=4, sigma=6), idf from these references",
    }
    if has_java:
        protocol["meteor"] = "meteor-1.5"
        protocol["meteor_options"] = "-l en -norm (as pycocoevalcap)"
    else:
        protocol["meteor_unavailable"] = ("java not found on PATH; METEOR runs only as "
                                          "pycocoevalcap's meteor-1.5.jar")
    return {
        **{f"bleu_{n + 1}": float(bleu[n]) for n in range(4)},
        "meteor": meteor,
        "rouge_l": float(rouge),
        "cider": float(cider),
        "per_image": {k: {"cider": float(c), "bleu_4": float(b)}
                      for k, c, b in zip(gts, cider_per_image, bleu_per_image[3])},
        "protocol": protocol,
    }
