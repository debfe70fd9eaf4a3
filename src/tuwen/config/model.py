"""``model``: the image and text towers, their fusion, the language model and the VQA head
(docs/models.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tuwen.config.base import Section, typed_union


class TowerTrainingConfig(Section):
    """How an image or text tower trains (docs/training.md). Both keys act on the tower's
    body: the whole small tower, or the Hugging Face model of an ``hf`` tower (its
    projection to ``model.hidden_size`` is new and always trains at the base rate)."""

    freeze: bool = Field(False, description=(
        "No gradients into the tower's body, which is kept in eval mode (dropout off, "
        "BatchNorm statistics fixed)."))
    lr_multiplier: float = Field(1.0, gt=0, description=(
        "The body's learning rate is `train.lr` times this (> 0)."))


class LoraConfig(Section):
    """LoRA adapters (``peft``) on a Hugging Face tower; its own weights stay frozen."""

    r: int = Field(8, ge=1, description="Rank of each adapter.")
    alpha: float = Field(16.0, gt=0, description="Scale: the update is multiplied by alpha / r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapters' input.")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description=(
        "Module names that get adapters (e.g. `[query, value]`), or `all-linear`."))


class HFTowerConfig(TowerTrainingConfig):
    """A Hugging Face model by hub name or local folder, or one architecture with random
    weights from ``hf_config`` (``{model_type: vit, hidden_size: 64, ...}``)."""

    name_or_path: str | None = Field(None, description=(
        "A hub name (needs the network once, then the HF cache) or a local folder. "
        "Exclusive with `hf_config`."))
    hf_config: dict[str, Any] | None = Field(None, description=(
        "A Hugging Face config as a mapping with a `model_type` (e.g. `{model_type: vit, "
        "hidden_size: 64}`): that architecture with random weights. Exclusive with "
        "`name_or_path`."))
    lora: LoraConfig | None = Field(None, description=(
        "Train LoRA adapters instead of the model's own weights; null: none. Exclusive "
        "with `freeze`."))
    gradient_checkpointing: bool = Field(False, description=(
        "Recompute the model's activations in the backward pass: less memory, more time."))

    @model_validator(mode="after")
    def _one_source(self) -> HFTowerConfig:
        if (self.name_or_path is None) == (self.hf_config is None):
            raise ValueError("set one of name_or_path (hub name or folder) and hf_config")
        if self.hf_config is not None and not isinstance(self.hf_config.get("model_type"), str):
            raise ValueError("hf_config needs a model_type (e.g. vit, resnet, bert)")
        if self.freeze and self.lora is not None:
            raise ValueError("freeze and lora exclude each other (lora already freezes the "
                             "model's own weights and trains the adapters)")
        return self


# ---------------------------------------------------------------- image encoder

class SmallViTConfig(TowerTrainingConfig):
    """A small Vision Transformer trained from scratch."""

    type: Literal["small_vit"] = Field("small_vit", description="Picks this kind.")
    patch_size: int = Field(16, ge=1, description=(
        "Side in pixels of the square each image token stands for: a power of two that "
        "divides `data.image_size` (the conv stem halves the resolution per step)."))
    layers: int = Field(2, ge=0, description="Transformer layers over the patches (0: none).")
    heads: int = Field(4, ge=1, description=(
        "Attention heads per layer; must divide `model.hidden_size`."))


class SmallCNNConfig(TowerTrainingConfig):
    """A small convolutional network trained from scratch: a conv stem, then residual 3x3
    stages; each cell of its feature map is an image token."""

    type: Literal["small_cnn"] = Field("small_cnn", description="Picks this kind.")
    patch_size: int = Field(16, ge=1, description=(
        "Side in pixels of the square each image token stands for: a power of two that "
        "divides `data.image_size` (the conv stem halves the resolution per step)."))
    layers: int = Field(2, ge=0, description="Residual 3x3 stages after the stem (0: none).")


class HFImageEncoderConfig(HFTowerConfig):
    """Any Hugging Face vision backbone (ViT, ResNet, CLIP or SigLIP vision...); its image
    processor sets `data.image_size`, `data.image_mean` and `data.image_std`."""

    type: Literal["hf"] = Field("hf", description="Picks this kind.")
    image_size: int | None = Field(None, ge=8, description=(
        "Images at this side in pixels instead of the image processor's (mean and std stay "
        "its own). ViT, DeiT, DINOv2, CLIP and SigLIP interpolate their position embeddings; "
        "CNNs take any size. null: the processor's size."))
    layers: int | None = Field(None, ge=1, description=(
        "Keep only the first this many blocks of a Transformer backbone (its final norm "
        "stays): a middle layer's tokens, as LLaVA's `select_layer` takes, for less compute. "
        "null: every block."))


IMAGE_ENCODERS: dict[str, type[Section]] = {
    "small_vit": SmallViTConfig, "small_cnn": SmallCNNConfig, "hf": HFImageEncoderConfig}
ImageEncoderConfig = typed_union(IMAGE_ENCODERS, default="small_vit")


# ---------------------------------------------------------------- text encoder

class TowerConfig(Section):
    """Keys of a Transformer stack built from scratch."""

    layers: int = Field(2, ge=1, description="Transformer layers.")
    heads: int = Field(4, ge=1, description=(
        "Attention heads per layer; must divide `model.hidden_size`."))


class TransformerTextEncoderConfig(TowerConfig, TowerTrainingConfig):
    """A small Transformer text encoder trained from scratch; its first token is [CLS]."""

    type: Literal["transformer"] = Field("transformer", description="Picks this kind.")
    window: int | None = Field(None, ge=1, description=(
        "Local self-attention: each token sees the tokens within this many positions ([CLS] "
        "sees and is seen by all); null: global attention."))


class LSTMTextEncoderConfig(TowerTrainingConfig):
    """An LSTM text encoder trained from scratch."""

    type: Literal["lstm"] = Field("lstm", description="Picks this kind.")
    layers: int = Field(1, ge=1, description="Recurrent layers.")
    bidirectional: bool = Field(True, description="Read the text in both directions.")


class GRUTextEncoderConfig(LSTMTextEncoderConfig):
    """A GRU text encoder trained from scratch."""

    type: Literal["gru"] = Field("gru", description="Picks this kind.")


class HFTextEncoderConfig(HFTowerConfig):
    """Any Hugging Face text encoder (BERT family); its tokenizer becomes the run's."""

    type: Literal["hf"] = Field("hf", description="Picks this kind.")
    pooling: Literal["auto", "cls", "mean"] = Field("auto", description=(
        "How a text becomes one vector (retrieval, ITC): `cls`, the model's pooler output "
        "(CLIP's end-of-text state) or else its first token ([CLS]); `mean`, the mean of its "
        "real tokens' states. `auto`: what a sentence-transformers folder says in its pooling "
        "module (all-MiniLM-L6-v2: mean), else `cls`. Saved with the model."))


TEXT_ENCODERS: dict[str, type[Section]] = {
    "transformer": TransformerTextEncoderConfig, "lstm": LSTMTextEncoderConfig,
    "gru": GRUTextEncoderConfig, "hf": HFTextEncoderConfig}
TextEncoderConfig = typed_union(TEXT_ENCODERS, default="transformer")


# ---------------------------------------------------------------- fusion

class CrossAttentionFusionConfig(TowerConfig):
    """Text tokens attend to image patches, layer by layer; returns the attention weights."""

    type: Literal["cross_attention"] = Field("cross_attention", description="Picks this kind.")
    window: int | None = Field(None, ge=1, description=(
        "Local self-attention over the text in every layer but the last, which stays "
        "global (as the text encoder's `window`); needs `layers` >= 2. Null: global."))

    @model_validator(mode="after")
    def _window_needs_a_global_layer(self) -> CrossAttentionFusionConfig:
        if self.window is not None and self.layers < 2:
            raise ValueError(f"model.fusion.window={self.window} needs model.fusion.layers >= 2 "
                             f"(the last layer stays global), got {self.layers}")
        return self


class ConcatFusionConfig(TowerConfig):
    """Both modalities projected to `hidden_size`, concatenated along the sequence with
    modality embeddings, then a joint Transformer."""

    type: Literal["concat"] = Field("concat", description="Picks this kind.")


class WeightedSumFusionConfig(Section):
    """A learned gate between each text token and its attention-aligned image summary."""

    type: Literal["weighted_sum"] = Field("weighted_sum", description="Picks this kind.")
    gate: Literal["scalar", "vector"] = Field("vector", description=(
        "`scalar`: one gate per token; `vector`: one per token and hidden dimension."))


FUSIONS: dict[str, type[Section]] = {
    "concat": ConcatFusionConfig, "weighted_sum": WeightedSumFusionConfig,
    "cross_attention": CrossAttentionFusionConfig}
FusionConfig = typed_union(FUSIONS, default="cross_attention")


# ---------------------------------------------------------------- decoder

class NoReductionConfig(Section):
    """Every image token reaches the language model."""

    type: Literal["none"] = Field("none", description="Picks this kind.")


class PixelShuffleConfig(Section):
    """Each ``factor`` x ``factor`` block of image tokens becomes one token ``factor``² times
    as wide (nanoVLM, Idefics3): ``factor``² fewer tokens, nothing averaged away."""

    type: Literal["pixel_shuffle"] = Field("pixel_shuffle", description="Picks this kind.")
    factor: int = Field(2, ge=2, description=(
        "Side of the block of neighbouring tokens merged into one; the grid's sides must be "
        "divisible by it."))


class AvgPoolConfig(Section):
    """The image token grid average-pooled to ``tokens`` tokens."""

    type: Literal["avg_pool"] = Field("avg_pool", description="Picks this kind.")
    tokens: int = Field(64, ge=1, description=(
        "How many tokens the pooled grid has: a square number (16, 36, 64, ...)."))

    @model_validator(mode="after")
    def _square(self) -> AvgPoolConfig:
        side = int(self.tokens ** 0.5 + 0.5)
        if side * side != self.tokens:
            raise ValueError(f"tokens={self.tokens} is not a square number (16, 36, 64, ...)")
        return self


REDUCTIONS: dict[str, type[Section]] = {
    "none": NoReductionConfig, "pixel_shuffle": PixelShuffleConfig, "avg_pool": AvgPoolConfig}
TokenReductionConfig = typed_union(REDUCTIONS, default="none")


class TransformerDecoderConfig(TowerConfig):
    """A small causal Transformer decoder trained from scratch, cross-attending to the
    fused sequence."""

    type: Literal["transformer"] = Field("transformer", description="Picks this kind.")


class HFDecoderConfig(HFTowerConfig):
    """A Hugging Face causal LM (name, folder or ``hf_config: {model_type: gpt2, ...}``)
    reading the image as a projected prefix (LLaVA) or through cross-attention (GPT-2)."""

    type: Literal["hf_causal_lm"] = Field("hf_causal_lm", description="Picks this kind.")
    conditioning: Literal["prefix", "cross_attention"] = Field("prefix", description=(
        "`prefix`: projected image tokens come before the text (LLaVA); `cross_attention`: "
        "the LM's own cross-attention layers read them (GPT-2 with `add_cross_attention`)."))
    projector: Literal["mlp", "linear"] = Field("mlp", description=(
        "The image-to-LM projection: a two-layer `mlp` or one `linear` layer."))
    reduce: TokenReductionConfig = Field(default_factory=NoReductionConfig, description=(
        "Fewer image tokens for the LM, before the projector: its cost grows with the "
        "prefix. `none`, `pixel_shuffle` (with `factor`) or `avg_pool` (with `tokens`)."))
    chat_template: Literal["auto", "none"] = Field("auto", description=(
        "`auto`: when the LM's tokenizer has a chat template (instruct models such as "
        "SmolLM2-Instruct), a caption or a generated answer is the assistant's reply to a "
        "user turn (a fixed caption request, or the question), in training and generation "
        "alike: the loss covers the reply, generation stops at the template's end of turn, "
        "and the resolved template is saved with the model. Tokenizers without one, and "
        "`none`, use the plain prompts ([BOS]; `question: ... answer:`)."))
    system_prompt: str = Field("none", min_length=1, description=(
        "The system turn of the chat template (`chat_template: auto`): `none` (no system "
        "turn: shorter sequences, the default for image tasks), `default` (the turn the "
        "template adds by itself, e.g. SmolLM2's \"You are a helpful AI assistant...\"), or "
        "any other text, sent as the system message. Resolved once and saved with the model, "
        "so training, generation and attention maps prompt alike."))


DECODERS: dict[str, type[Section]] = {
    "transformer": TransformerDecoderConfig, "hf_causal_lm": HFDecoderConfig}
DecoderConfig = typed_union(DECODERS, default="transformer")


# ---------------------------------------------------------------- VQA and the whole model

class VQAModeConfig(Section):
    """How questions are answered."""

    mode: Literal["classify", "generate"] = Field("classify", description=(
        "`classify`: a head over the answer vocabulary (the VQAv2 standard); `generate`: the "
        "decoder writes the answer after the question (loss on the answer tokens only)."))
    readout_queries: int = Field(0, ge=0, description=(
        "classify: learned queries that attention-pool the fused question tokens for the "
        "head, beside the fused [CLS]; 0: [CLS] only."))
    read_positions: int = Field(0, ge=0, description=(
        "classify: the fused tokens at the first N places of the question, side by side, "
        "also feed the head; 0: none."))


class ModelConfig(Section):
    """The whole model: sizes shared by every part, then each part."""

    hidden_size: int = Field(128, ge=8, description=(
        "Width every part is projected to; every `heads` must divide it."))
    embed_dim: int = Field(128, ge=8, description="Width of the ITC embeddings.")
    mlp_ratio: float = Field(4.0, gt=0, description=(
        "Feed-forward width of the small Transformers, as a multiple of `hidden_size`."))
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "Dropout probability in the small towers, fusion and decoder."))
    image_encoder: ImageEncoderConfig = Field(SmallViTConfig(), description=(
        "The image tower; `type` picks one of the kinds below."))
    text_encoder: TextEncoderConfig = Field(TransformerTextEncoderConfig(), description=(
        "The text tower (ITC, ITM and the question side of VQA); `type` picks one of the "
        "kinds below."))
    fusion: FusionConfig = Field(CrossAttentionFusionConfig(), description=(
        "How image and text meet; `type` picks one of the kinds below."))
    decoder: DecoderConfig = Field(TransformerDecoderConfig(), description=(
        "The language model that writes captions (and answers, with `vqa.mode: "
        "generate`); `type` picks one of the kinds below."))
    vqa: VQAModeConfig = Field(VQAModeConfig(), description="Question answering.")
    length_buckets: int = Field(1, ge=1, description=(
        "Texts run through the text tower and the fusion in this many groups of similar "
        "length, each cut to its longest text: less padding, the same results."))

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelConfig:
        for name in ("image_encoder", "text_encoder", "fusion", "decoder"):
            heads = getattr(getattr(self, name), "heads", None)  # weighted_sum has none
            if heads is not None and self.hidden_size % heads:
                raise ValueError(f"model.{name}.heads={heads} must divide "
                                 f"model.hidden_size={self.hidden_size}")
        return self
