"""What can a frozen image tower's tokens answer? A quick question-conditioned readout.

Encodes every image of a VQAv2-format set once with a frozen image model (its patch tokens,
at each requested side and hidden layer), then trains only a small readout on the training
questions: the question's words, averaged, form one query that attends over the image's
tokens (layer norm, a two-layer MLP, learned positions), and an MLP classifies the answer
from what it read and the query. It reports the test questions' exact-match accuracy overall
and per question type. The readout looks at the image once, so object attributes (colour,
shape, presence) are within its reach and relations between two objects mostly are not:
what it reaches on an attribute says whether the features carry it, fast, before an LM
spends half an hour learning to read them.

    python tools/vqa_readout_probe.py data/shapes --image-model DIR/dinov2-small \
        --sizes 112 224 --layers -1

The folder holds ``vqa_questions_{split}.json`` and ``vqa_annotations_{split}.json``
(VQAv2's format; ``question_type`` per annotation, else ``answer_type``) and the images at
``--image-pattern`` (default ``images/{image_id:06d}.png``, as ``tuwen data shapes`` writes).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import AutoModel

from tuwen.models.hf_image import grid_tokens

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as DINOv2's processor


def questions(root: Path, split: str) -> list[dict]:
    """One dict per question: image_id, words, answer (the multiple-choice answer), type."""
    asked = json.loads((root / f"vqa_questions_{split}.json").read_text())["questions"]
    notes = {a["question_id"]: a for a in
             json.loads((root / f"vqa_annotations_{split}.json").read_text())["annotations"]}
    rows = []
    for q in asked:
        note = notes[q["question_id"]]
        rows.append({"image_id": q["image_id"],
                     "words": re.findall(r"[a-z0-9]+", q["question"].lower()),
                     "answer": note["multiple_choice_answer"],
                     "type": note.get("question_type") or note.get("answer_type", "all")})
    return rows


def patch_tokens(model, files: list[Path], size: int, layers: list[int],
                 batch: int = 32) -> dict[int, torch.Tensor]:
    """layer -> (images, patches, width): the grid tokens (CLS and registers left out)."""
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for start in range(0, len(files), batch):
        pixels = []
        for file in files[start:start + batch]:
            image = Image.open(file).convert("RGB").resize((size, size), Image.BICUBIC)
            x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
            pixels.append((x - mean) / std)
        with torch.no_grad():
            result = model(pixel_values=torch.stack(pixels), output_hidden_states=True)
        for layer in layers:
            states = result.last_hidden_state if layer == -1 else result.hidden_states[layer]
            out[layer].append(grid_tokens(states)[0])
    return {layer: torch.cat(parts) for layer, parts in out.items()}


class Readout(nn.Module):
    """One look: a bag-of-words query attends over the normalised, projected tokens."""

    def __init__(self, width: int, patches: int, words: int, answers: int,
                 dim: int = 256) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Sequential(nn.Linear(width, dim), nn.GELU(), nn.Linear(dim, dim))
        self.pos = nn.Parameter(torch.zeros(patches, dim))
        self.embed = nn.Embedding(words + 1, dim, padding_idx=words)
        self.attend = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.classify = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, answers))

    def forward(self, tokens: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        image = self.proj(self.norm(tokens)) + self.pos
        used = (words != self.embed.padding_idx).float().unsqueeze(-1)
        # a question of words all unseen in training: a zero query, not 0 / 0
        words_used = used.sum(1, keepdim=True).clamp(min=1)
        query = (self.embed(words) * used).sum(1, keepdim=True) / words_used
        read, _ = self.attend(query, image, image)
        return self.classify(torch.cat([read[:, 0], query[:, 0]], -1))


def encode(rows: list[dict], vocab: dict[str, int], answers: dict[str, int],
           image_index: dict[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image rows, padded word ids, answer ids); an answer unseen in training is -1."""
    width = max(len(r["words"]) for r in rows)
    words = torch.full((len(rows), width), len(vocab), dtype=torch.long)
    for i, r in enumerate(rows):
        ids = [vocab[w] for w in r["words"] if w in vocab]
        words[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return (torch.tensor([image_index[r["image_id"]] for r in rows]), words,
            torch.tensor([answers.get(r["answer"], -1) for r in rows]))


def probe(tokens: torch.Tensor, train: list[dict], test: list[dict],
          image_index: dict[int, int], steps: int, batch: int, seed: int) -> dict[str, float]:
    """Test exact-match accuracy % per question type (and ``all``) after training a readout."""
    torch.manual_seed(seed)
    vocab = {w: i for i, w in enumerate(sorted({w for r in train for w in r["words"]}))}
    answers = {a: i for i, a in enumerate(sorted({r["answer"] for r in train}))}
    img_tr, words_tr, ans_tr = encode(train, vocab, answers, image_index)
    img_te, words_te, ans_te = encode(test, vocab, answers, image_index)
    net = Readout(tokens.shape[-1], tokens.shape[1], len(vocab), len(answers))
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(0, len(train), (batch,), generator=order)
        loss = F.cross_entropy(net(tokens[img_tr[pick]], words_tr[pick]), ans_tr[pick])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.eval()
    with torch.no_grad():
        right = (net(tokens[img_te], words_te).argmax(1) == ans_te).float()
    by_type: dict[str, list[float]] = defaultdict(list)
    for r, ok in zip(test, right.tolist()):
        by_type[r["type"]].append(ok)
        by_type["all"].append(ok)
    return {t: 100 * float(np.mean(v)) for t, v in by_type.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder of the VQAv2-format files and images")
    parser.add_argument("--image-model", required=True, help="HF image model (folder or name)")
    parser.add_argument("--image-pattern", default="images/{image_id:06d}.png")
    parser.add_argument("--split", default="test", help="the split to score")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224], help="image sides, px")
    parser.add_argument("--layers", type=int, nargs="+", default=[-1], help=(
        "hidden states to read: -1 the output (after the final norm), k the k-th block's"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)

    train, test = questions(args.root, "train"), questions(args.root, args.split)
    ids = sorted({r["image_id"] for r in train + test})
    image_index = {image_id: i for i, image_id in enumerate(ids)}
    files = [args.root / args.image_pattern.format(image_id=i) for i in ids]
    model = AutoModel.from_pretrained(args.image_model).eval()
    types = sorted({r["type"] for r in test})
    print(f"{len(train)} training and {len(test)} {args.split} questions on {len(ids)} images; "
          f"exact-match accuracy %, {args.steps} steps of {args.batch}, "
          f"mean over {args.seeds} seed(s)")
    print("| px | layer | tokens | all | " + " | ".join(types) + " |")
    print("|---|---|---|---|" + "---|" * len(types))
    for size in args.sizes:
        for layer, tokens in patch_tokens(model, files, size, args.layers).items():
            runs = [probe(tokens, train, test, image_index, args.steps, args.batch, seed)
                    for seed in range(args.seeds)]
            cells = [f"{np.mean([r.get(t, 0.0) for r in runs]):.1f}" for t in ["all", *types]]
            print(f"| {size} | {layer} | {tokens.shape[1]} | " + " | ".join(cells) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
