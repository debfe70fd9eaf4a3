"""``eval``: what ``tuwen eval`` scores and how it decodes (docs/evaluation.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tuwen.config.base import Section


class EvalConfig(Section):
    """Evaluation: tasks, batch size and caption decoding."""

    splits: list[str] = Field(["test"], description=(
        "The evaluation splits; `tuwen data check` checks them beside the training and "
        "validation splits (`tuwen eval RUN --split` picks the one to score)."))
    tasks: list[str] | None = Field(None, description=(
        "The evaluators run, by their metrics.json section: `caption` (BLEU, METEOR, "
        "ROUGE-L, CIDEr), `retrieval` (R@1/5/10 both ways), `vqa` (VQAv2 accuracy), "
        "`classify` (zero-shot top-1/top-5), and any added task's; null: every one the "
        "split has labels for."))
    batch_size: int = Field(128, ge=1, description="Images per inference batch.")
    decoding: Literal["greedy", "beam", "top_p"] = Field("beam", description=(
        "Caption decoding: `greedy`, `beam` search or `top_p` (nucleus) sampling; greedy "
        "captions are scored too when this is not greedy."))
    beam_size: int = Field(3, ge=1, description="Beams for `decoding: beam`.")
    length_penalty: float = Field(1.0, description=(
        "Beam search: scores are divided by length ** length_penalty (0: no length "
        "normalisation)."))
    top_p: float = Field(0.9, gt=0, le=1, description=(
        "The probability mass sampled from with `decoding: top_p` (0..1)."))
    temperature: float = Field(1.0, gt=0, description=(
        "Softmax temperature with `decoding: top_p`."))
    seed: int = Field(0, description="Seeds `top_p` sampling.")
    max_new_tokens: int = Field(30, ge=1, description="The longest caption generated, in tokens.")
    max_images: int | None = Field(None, ge=1, description=(
        "Score only the first N images of the split (and their questions); null: all."))
    itm_rerank_k: int = Field(0, ge=0, description=(
        "Retrieval: re-rank each query's ITC top-k candidates with the ITM head; 0: ITC only."))
