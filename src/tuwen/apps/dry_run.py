"""``tuwen train CONFIG --dry-run``: check a config for real data and hub models offline.

The config is validated as ``train`` would; then the model is built from the SAME
architectures at a tiny size (each Hugging Face tower from a tiny config of its model_type,
random weights, no network), with a WordPiece tokenizer trained here on a few sentences,
and one forward + backward runs with every active objective on a synthetic batch. Data
files are not needed; whether they exist is reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import CONFIG_MAPPING, AutoConfig

from tuwen.apps.lm_tokens import LMTokens, lm_tokens
from tuwen.config import Config, HFTowerConfig, ModelConfig
from tuwen.data.answers import AnswerVocab
from tuwen.data.batch import Batch
from tuwen.data.dataset import Collator, TextTools
from tuwen.data.records import Conversation, VQAItem
from tuwen.data.text import TextNormalizer
from tuwen.data.tokenizer import train_tokenizer
from tuwen.errors import ConfigError
from tuwen.models.hf_backbone import SUB_CONFIG
from tuwen.models.image_text_model import ImageTextModel, build_model
from tuwen.models.spec import ModelSpec
from tuwen.tasks.table import joint_step, model_heads, part_collates, task_options, trained
from tuwen.training.stages import plan_lines

# The hub models the shipped configs name, so that no lookup is needed to know their type.
HUB_MODEL_TYPES = {"google/vit-base-patch16-224": "vit", "gpt2": "gpt2",
                   "bert-base-uncased": "bert", "openai/clip-vit-base-patch32": "clip",
                   "google/siglip-base-patch16-224": "siglip",
                   "HuggingFaceTB/SmolLM-135M": "llama", "microsoft/resnet-50": "resnet",
                   "sentence-transformers/all-MiniLM-L6-v2": "bert",
                   "HuggingFaceTB/SmolLM2-135M-Instruct": "llama",
                   "facebook/dinov2-small": "dinov2"}
# Size keys set on a tiny config wherever the architecture has them.
TINY_HF = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
           "num_key_value_heads": 1, "intermediate_size": 64, "image_size": 32, "patch_size": 8,
           "max_position_embeddings": 128, "projection_dim": 16, "embedding_size": 8,
           "hidden_sizes": [8, 16], "depths": [1, 1]}
TINY_HIDDEN, TINY_IMAGE, TINY_ANSWERS = 32, 32, 8
TOWERS = ("image_encoder", "text_encoder", "decoder")
SENTENCES = ["a red circle left of a blue square", "two green triangles above a yellow square",
             "a dog runs on the grass", "a man rides a bike down the street",
             "what colour is the circle?", "how many people are there?", "is it raining?"]
ANSWERS = ["red", "two", "yes", "no", "blue", "one", "green", "dog"]


@dataclass
class DryRunReport:
    sizes: dict[str, int] = field(default_factory=dict)         # tuwen-side tiny sizes
    tiny_towers: dict[str, dict] = field(default_factory=dict)  # tower -> tiny hf config used
    parameters: dict[str, int] = field(default_factory=dict)    # part -> parameter count
    losses: dict[str, float] = field(default_factory=dict)
    data_files: dict[str, bool] = field(default_factory=dict)   # path -> exists
    lm_tokens: LMTokens | None = None  # the configured LM's tokens per sample, by part
    plan: list[str] = field(default_factory=list)  # train.stages, as lines

    def lines(self) -> list[str]:
        out = ["dry run: the model below is a TINY STAND-IN built from the same architectures "
               "(random weights, no download), not the configured model"]
        out.append("  sizes: " + ", ".join(f"{k}={v}" for k, v in self.sizes.items()))
        out += [f"  {name}: {tower}" for name, tower in self.tiny_towers.items()]
        out += [f"  params {part}: {n:,}" for part, n in self.parameters.items()]
        out += ["  forward+backward ok: " + ", ".join(f"{k}={v:.3f}" for k, v in
                                                     self.losses.items())]
        out += [f"  data {'found' if ok else 'MISSING'}: {p}" for p, ok in self.data_files.items()]
        if self.lm_tokens is not None:  # the configured model's, not the stand-in's
            out += self.lm_tokens.lines()
        return out + self.plan


def hub_model_type(name: str, where: str) -> str:
    """A hub name's or folder's model_type without the network: its config.json, the known
    table, the local cache, or a model type named in the name (``microsoft/resnet-50``)."""
    if name in HUB_MODEL_TYPES:
        return HUB_MODEL_TYPES[name]
    try:
        return AutoConfig.from_pretrained(name, local_files_only=True).model_type
    except (OSError, ValueError):
        pass
    words = set(re.split(r"[/\-_. ]", name.lower()))
    found = sorted((t for t in CONFIG_MAPPING.keys() if t in words), key=len)
    if not found:
        raise ConfigError(f"{where}.name_or_path: cannot tell the architecture of {name!r} "
                          "offline; use hf_config: {model_type: ...} for the dry run")
    return found[-1]


def tiny_hf_config(model_type: str, modality: str, where: str) -> dict[str, Any]:
    """Tiny sizes for one architecture (a two-tower type gives its image or text tower)."""
    try:
        config = AutoConfig.for_model(model_type)
    except ValueError as err:
        raise ConfigError(f"{where}: unknown model_type {model_type!r} ({err})") from None
    sub = SUB_CONFIG.get(modality)
    if sub in getattr(type(config), "sub_configs", {}):  # clip, siglip -> one tower
        config = getattr(config, sub)
    tiny = {k: v for k, v in TINY_HF.items() if hasattr(config, k)}
    if config.model_type == "resnet":
        tiny["layer_type"] = "basic"  # bottleneck blocks of 8 channels would have 2
    return {"model_type": config.model_type, **tiny}


def tiny_model_config(model: ModelConfig) -> tuple[ModelConfig, dict[str, dict]]:
    """The same component types at tiny size; hf towers become tiny ``hf_config``s."""
    raw, tiny_towers = model.model_dump(mode="json"), {}
    raw.update(hidden_size=TINY_HIDDEN, embed_dim=16)
    for name in ("image_encoder", "text_encoder", "fusion", "decoder"):
        section = raw[name]
        if "heads" in section:
            # a windowed fusion keeps one local and one global layer
            section.update(heads=2, layers=2 if name == "fusion" and section.get("window") else 1)
        elif "layers" in section:
            section["layers"] = 1
        if section.get("type") == "small_vit" or section.get("type") == "small_cnn":
            section["patch_size"] = 8
    for name in TOWERS:
        cfg = getattr(model, name)
        if isinstance(cfg, HFTowerConfig):
            where = f"model.{name}"
            kind = (cfg.hf_config or {}).get("model_type") or hub_model_type(cfg.name_or_path,
                                                                              where)
            modality = {"image_encoder": "image", "text_encoder": "text"}.get(name, "lm")
            tiny = tiny_hf_config(kind, modality, where)
            raw[name].update(name_or_path=None, hf_config=tiny)
            tiny_towers[name] = tiny
    return ModelConfig.model_validate(raw), tiny_towers


def synthetic_batch(tok, spec: ModelSpec, config: Config, seed: int = 0) -> Batch:
    """Four random images with two captions, one question and one conversation each, and a
    text-only conversation, collated like training."""
    vqa_answers = spec.model.vqa.mode == "generate"
    g = torch.Generator().manual_seed(seed)
    vocab = AnswerVocab(ANSWERS[:spec.num_answers])
    items = [{"pixel_values": torch.randn(3, spec.image_size, spec.image_size, generator=g),
              "captions": [SENTENCES[i], SENTENCES[i + 1]],
              "questions": [VQAItem(i, i, Path(f"{i}.png"), SENTENCES[4 + i % 3],
                                    (ANSWERS[i],) * 10, ANSWERS[i], "what", "other")],
              "conversations": [_conversation(i, f"<image>\n{SENTENCES[4 + i % 3]}")]}
             for i in range(4)]
    items.append({"pixel_values": None, "captions": [], "questions": [],
                  "conversations": [_conversation(4, SENTENCES[5], image=False)]})
    tools = TextTools(tok, tok, TextNormalizer(), spec.max_text_length,
                      vocab=None if vqa_answers else vocab)
    return Collator(tools, part_collates(tools, config, spec, None))(items)


def _conversation(i: int, question: str, image: bool = True) -> Conversation:
    return Conversation(i, i if image else None, Path(f"{i}.png") if image else None, "train",
                        (("user", question), ("assistant", ANSWERS[i])))


def data_files(config: Config) -> dict[str, bool]:
    """Each source's annotation files (for the train split) under data.root: exists?"""
    root, out = Path(config.data.root), {}
    for source in config.data.sources:
        for key in ("path", "questions", "annotations", "image_root", "image_map"):
            value = getattr(source, key, None)
            if not isinstance(value, str):
                continue
            for split in source.split_names(config.data.train_split) or [None]:
                path = root / (value.replace("{split}", split) if split else value)
                out[str(path)] = path.exists()
    return out


def tiny_model(config: Config, seed: int = 0) -> tuple[ImageTextModel, object, DryRunReport]:
    """The tiny stand-in model, its tokenizer and the report's tower sizes."""
    model_cfg, tiny_towers = tiny_model_config(config.model)
    tok = train_tokenizer(SENTENCES + ANSWERS, vocab_size=200)
    spec = ModelSpec(model=model_cfg, vocab_size=len(tok), num_answers=TINY_ANSWERS,
                     image_size=TINY_IMAGE, max_text_length=min(config.data.max_text_length, 32),
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id)
    spec = replace(spec, heads=model_heads(spec))
    torch.manual_seed(seed)
    model = build_model(spec)
    model.tokenizer = tok
    sizes = {"hidden_size": TINY_HIDDEN, "image_size": TINY_IMAGE, "vocab_size": len(tok),
             "num_answers": TINY_ANSWERS, "max_text_length": spec.max_text_length}
    return model, tok, DryRunReport(sizes=sizes, tiny_towers=tiny_towers)


def dry_run(config: Config, seed: int = 0) -> DryRunReport:
    """Build the tiny stand-in, run one joint forward + backward, and report."""
    model, tok, report = tiny_model(config, seed)
    weights = {n: w for n, w in trained(config.data.provides(), config).items() if w > 0}
    batch = synthetic_batch(tok, model.spec, config, seed)
    total, losses = joint_step(model.train(), batch, weights, task_options(config))
    total.backward()
    for part in ("image_encoder", "text_encoder", "fusion", "decoder"):
        report.parameters[part] = sum(p.numel() for p in getattr(model, part).parameters())
    report.parameters["heads"] = sum(p.numel() for name in model.head_names
                                     for p in getattr(model, name).parameters())
    report.losses = {k: v.item() for k, v in losses.items()}
    report.data_files = data_files(config)
    report.lm_tokens = lm_tokens(config)
    report.plan = plan_lines(config.train, weights)
    return report
