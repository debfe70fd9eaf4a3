"""tuwen's side of the training benchmark: the real CLI (``tuwen train``) with data loading,
and one step of the same model in-process for its FLOPs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.peer import Dims
from tuwen.config import load_config
from tuwen.data.shapes import generate_shapes
from tuwen.models.image_text_model import build_model
from tuwen.tasks.table import with_train_tasks
from tuwen.training.assets import prepare_assets
from tuwen.training.loop import build_loader
from tuwen.training.objective import JointObjective
from tuwen.training.optim import task_weights
from tuwen.training.precision import autocast

CONFIGS = {"vit_gpt2": "configs/bench_vit_gpt2.yaml", "native": "configs/bench_native.yaml"}


def shapes_data(root: Path, image_size: int = 96, n_train: int = 1500) -> Path:
    """The shapes data at the benchmark's image size (made once)."""
    if not (root / "manifest.json").is_file():
        generate_shapes(root, seed=0, image_size=image_size, n_train=n_train, n_val=16,
                        n_test=16, n_test_novel=8, progress=False)
    return root


def dims_overrides(path: str, dims: Dims) -> list[str]:
    """``--set``s that give ``path``'s config the peer's dimensions."""
    sets = [f"data.image_size={dims.image_size}", f"model.hidden_size={dims.hidden}",
            f"model.embed_dim={dims.hidden}", f"model.mlp_ratio={dims.mlp / dims.hidden}",
            f"train.batch_size={dims.batch}", f"model.text_encoder.heads={dims.heads}",
            f"model.fusion.heads={dims.heads}"]
    if path == "native":
        return sets + [f"model.{tower}.{key}={value}" for tower in ("image_encoder", "decoder")
                       for key, value in (("layers", dims.layers), ("heads", dims.heads))]
    vit, gpt2 = "model.image_encoder.hf_config", "model.decoder.hf_config"
    return sets + [f"{vit}.hidden_size={dims.hidden}", f"{vit}.num_hidden_layers={dims.layers}",
                   f"{vit}.num_attention_heads={dims.heads}",
                   f"{vit}.intermediate_size={dims.mlp}", f"{vit}.image_size={dims.image_size}",
                   f"{vit}.patch_size={dims.patch_size}", f"{gpt2}.n_embd={dims.hidden}",
                   f"{gpt2}.n_layer={dims.layers}", f"{gpt2}.n_head={dims.heads}",
                   f"{gpt2}.n_inner={dims.mlp}", f"{gpt2}.vocab_size={dims.vocab}"]


def overrides(path: str, dims: Dims, data: Path, precision: str, steps: int, log_every: int,
              extra: list[str] | None = None) -> list[str]:
    return [f"data.root={data}", f"train.precision={precision}", f"train.max_steps={steps}",
            f"train.log_every={log_every}", *dims_overrides(path, dims), *(extra or [])]


def run_cli(path: str, out: Path, sets: list[str], env: dict[str, str],
            device: str = "cpu") -> list[dict]:
    """``tuwen train`` in a fresh process; returns its metrics.jsonl records."""
    cmd = [sys.executable, "-m", "tuwen", "train", CONFIGS[path], "--out", str(out)]
    if device == "cpu":  # tuwen train takes a visible GPU
        env = {**env, "CUDA_VISIBLE_DEVICES": ""}
    for item in sets:
        cmd += ["--set", item]
    subprocess.run(cmd, check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, text=True)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def step_time(records: list[dict], first: int, last: int) -> float:
    """Seconds per step between the log lines of steps ``first`` and ``last``."""
    at = {r["step"]: r["elapsed_s"] for r in records if "elapsed_s" in r}
    return (at[last] - at[first]) / (last - first)


def tuwen_step(path: str, dims: Dims, data: Path, precision: str, workdir: Path,
               device: str = "cpu"):
    """(run one forward+backward, the caption length it trained on) for the FLOP count."""
    config = load_config(CONFIGS[path], overrides(path, dims, data, precision, 1, 1))
    assets = prepare_assets(config, workdir / f"assets_{path}")
    config = with_train_tasks(config, assets.train, lambda _: None)
    objective = JointObjective(build_model(assets.spec).train()).to(device)
    batch = next(iter(build_loader(config, assets))).to(device)
    weights = task_weights(0, config.train)

    def run() -> None:
        with autocast(precision, torch.device(device)):
            total, _ = objective(batch, weights)
        total.backward()

    return run, int(batch.part("caption").input_ids.shape[1])
