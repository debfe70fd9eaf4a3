"""How far can two frozen towers be aligned on a captioned set? A quick upper bound.

Encodes every image once with a frozen image model (its [CLS] state and the mean of its patch
states) and every caption once with a frozen text model (mean of its token states), then trains
only two linear maps into a shared space with the symmetric contrastive loss (CLIP's) on the
training split, and reports test retrieval R@1 both ways. Training the projections of frozen
towers is what tuwen's ITC does with frozen towers, with nothing else in the way, so what this
reaches in a few seconds bounds what ITC alone can reach on the same features.

    python tools/alignment_probe.py data/tuxpaint/captions.json \
        --image-model DIR/dinov2-small --text-model DIR/minilm --sizes 112 224

The captions file is Karpathy's format (``images[].filename``, ``split``, ``sentences[].raw``;
the first sentence of each image is used); images are read from its folder's ``images/``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModel, AutoTokenizer

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as DINOv2's processor


def image_features(model, files: list[Path], size: int, batch: int = 32) -> dict[str, torch.Tensor]:
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    cls, avg = [], []
    for start in range(0, len(files), batch):
        pixels = []
        for file in files[start:start + batch]:
            image = Image.open(file).convert("RGB").resize((size, size), Image.BICUBIC)
            x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
            pixels.append((x - mean) / std)
        with torch.no_grad():
            states = model(pixel_values=torch.stack(pixels)).last_hidden_state
        cls.append(states[:, 0])
        avg.append(states[:, 1:].mean(1))
    return {"cls": torch.cat(cls), "cls+mean": torch.cat([torch.cat(cls), torch.cat(avg)], 1)}


def text_features(model, tokenizer, texts: list[str]) -> torch.Tensor:
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return (states * mask).sum(1) / mask.sum(1)


def align(images: torch.Tensor, texts: torch.Tensor, train: list[int], test: list[int],
          steps: int, batch: int, seed: int, dim: int = 256) -> tuple[float, float]:
    """R@1 % (image->text, text->image) on ``test`` after training two linear maps."""
    torch.manual_seed(seed)
    to_image, to_text = torch.nn.Linear(images.shape[1], dim), torch.nn.Linear(texts.shape[1], dim)
    log_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
    params = [*to_image.parameters(), *to_text.parameters(), log_scale]
    optimiser = torch.optim.AdamW(params, lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    rows = torch.tensor(train)
    for _ in range(steps):
        pick = rows[torch.randperm(len(rows), generator=order)[:batch]]
        a = F.normalize(to_image(images[pick]), dim=-1)
        b = F.normalize(to_text(texts[pick]), dim=-1)
        logits = a @ b.T * log_scale.clamp(max=np.log(100)).exp()
        target = torch.arange(len(pick))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        sim = F.normalize(to_image(images[test]), dim=-1) @ F.normalize(to_text(texts[test]),
                                                                       dim=-1).T
    right = torch.arange(len(test))
    return (float((sim.argmax(1) == right).float().mean() * 100),
            float((sim.argmax(0) == right).float().mean() * 100))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("captions", type=Path, help="Karpathy-format captions JSON")
    parser.add_argument("--image-model", required=True, help="HF image model (folder or name)")
    parser.add_argument("--text-model", required=True, help="HF text model (folder or name)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224], help="image sides, px")
    parser.add_argument("--steps", type=int, nargs="+", default=[400, 800])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    entries = json.loads(args.captions.read_text())["images"]
    files = [args.captions.parent / "images" / e["filename"] for e in entries]
    train = [i for i, e in enumerate(entries) if e["split"] == "train"]
    test = [i for i, e in enumerate(entries) if e["split"] == "test"]
    texts = text_features(AutoModel.from_pretrained(args.text_model).eval(),
                          AutoTokenizer.from_pretrained(args.text_model),
                          [e["sentences"][0]["raw"] for e in entries])
    image_model = AutoModel.from_pretrained(args.image_model).eval()
    print(f"{len(train)} training and {len(test)} test pairs; R@1 % on the test pairs, "
          f"mean over {args.seeds} seeds (image->text / text->image)")
    print("| image features | px | " + " | ".join(f"{s} steps" for s in args.steps) + " |")
    print("|---|---|" + "---|" * len(args.steps))
    for size in args.sizes:
        for name, feats in image_features(image_model, files, size).items():
            cells = []
            for steps in args.steps:
                runs = [align(feats, texts, train, test, steps, args.batch, seed)
                        for seed in range(args.seeds)]
                i2t, t2i = np.mean(runs, axis=0)
                cells.append(f"{i2t:.0f} / {t2i:.0f}")
            print(f"| {name} | {size} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
