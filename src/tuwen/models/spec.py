"""ModelSpec: everything needed to rebuild the same architecture, written as ``config.json``.

The builder turns a spec into modules (``builder.build_components``); ``ImageTextModel``
keeps the spec it was built from so that ``save_pretrained`` can write it back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tuwen import __version__
from tuwen.config import ModelConfig, TextConfig
from tuwen.config.chat import ChatFormat


@dataclass
class ModelSpec:
    """The model config plus the sizes and token ids that come from the data and tokenizer."""

    model: ModelConfig
    vocab_size: int
    num_answers: int
    image_size: int
    max_text_length: int
    pad_token_id: int = 0
    bos_token_id: int = 4
    eos_token_id: int = 5
    # the text encoder's own tokenizer, when it is not the decoder's (None: the same)
    text_vocab_size: int | None = None
    text_pad_token_id: int | None = None
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # tower name -> its Hugging Face config (to_dict()), recorded when the model is built:
    # from_pretrained rebuilds hf towers from these, offline, not from the hub name
    hf_configs: dict[str, dict] = field(default_factory=dict)
    # how texts were normalised in training (data.text); inference applies the same
    text: TextConfig = field(default_factory=TextConfig)
    # the LM's chat template captions and answers are wrapped in (model.decoder.chat_template);
    # None: plain prompts. eos_token_id is then its end-of-turn token.
    chat: ChatFormat | None = None
    # the task heads: attribute -> {"type": a models.heads.HEADS key, **arguments}, in the
    # order they are built; empty: the built-in tasks' heads (``default_heads``), as every
    # model saved before tasks declared their heads has them
    heads: dict[str, dict] = field(default_factory=dict)

    def head_specs(self) -> dict[str, dict]:
        return self.heads or default_heads(self)

    @property
    def text_vocab(self) -> tuple[int, int]:
        """(vocab size, pad id) of the text encoder's tokenizer."""
        if self.text_vocab_size is None:
            return self.vocab_size, self.pad_token_id
        return self.text_vocab_size, self.text_pad_token_id

    def to_dict(self) -> dict:
        out = asdict(self)
        out["model"] = self.model.model_dump(mode="json")
        out["text"] = self.text.model_dump(mode="json")
        out["chat"] = None if self.chat is None else self.chat.to_dict()
        return {"tuwen_version": __version__, **out}

    @classmethod
    def from_dict(cls, raw: dict) -> ModelSpec:
        raw = {k: v for k, v in raw.items() if k != "tuwen_version"}
        image = raw["model"].get("image_encoder") or {}
        if image.get("type") == "small_cnn":  # saved before the CNN stopped taking `heads`
            raw["model"] = {**raw["model"], "image_encoder": {
                k: v for k, v in image.items() if k != "heads"}}
        raw["model"] = ModelConfig.model_validate(raw["model"])
        raw["text"] = TextConfig.model_validate(raw.get("text", {}))  # absent before 0.1 models
        chat = raw.get("chat")  # absent before chat templates
        raw["chat"] = None if chat is None else ChatFormat.from_dict(chat)
        for key in ("image_mean", "image_std"):
            raw[key] = tuple(raw[key])
        return cls(**raw)


def default_heads(spec: ModelSpec) -> dict[str, dict]:
    """The heads of the built-in tasks (ITC, ITM, VQA), for a spec that names none; the same
    as their tasks declare (a test holds the two equal)."""
    m = spec.model
    return {"itc_head": {"type": "contrastive", "dim": m.hidden_size, "embed_dim": m.embed_dim},
            "itm_head": {"type": "matching", "dim": m.hidden_size},
            "vqa_head": {"type": "answer", "dim": m.hidden_size,
                         "num_answers": spec.num_answers, "dropout": m.dropout,
                         "queries": m.vqa.readout_queries, "positions": m.vqa.read_positions}}
