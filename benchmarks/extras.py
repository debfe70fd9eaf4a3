"""The cost of the joint-training extras on the demo config (configs/shapes.yaml): length buckets
(``model.length_buckets``), ITC target weighting (``train.task_options.itc.specific_captions``)
and the per-task gradient-norm probes (``train.task_grad_norm_every``), each switched off
alone; and the demo step with AdamW's per-parameter loop, as before the fused update.

In one process, on the same batches: forward + backward + AdamW of the demo's joint step,
alternating the variants, best of the repeats. A probe runs one extra backward per task every
``task_grad_norm_every`` steps; its cost per step is the probe's time over that period.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from benchmarks.tuwen_side import shapes_data
from tuwen.config import load_config
from tuwen.models.image_text_model import build_model
from tuwen.tasks.table import with_train_tasks
from tuwen.training.assets import prepare_assets
from tuwen.training.grad_norms import task_gradient_norms
from tuwen.training.loop import build_loader
from tuwen.training.objective import JointObjective
from tuwen.training.optim import build_optimizer, task_weights

VARIANTS = {"as shipped": [], "length_buckets: 1": ["model.length_buckets=1"],
            "itc specific_captions: false": ["train.task_options.itc.specific_captions=false"],
            "AdamW per-parameter loop (before fused)": []}


def parts(name: str, data: Path, work: Path, batch: int):
    sets = VARIANTS[name]
    config = load_config("configs/shapes.yaml", [f"data.root={data}", "data.image_size=48",
                                                 f"train.batch_size={batch}", *sets])
    assets = prepare_assets(config, work / "assets")
    config = with_train_tasks(config, assets.train, lambda _: None)
    torch.manual_seed(0)
    model = build_model(assets.spec).train()
    objective = JointObjective(model)
    loader = iter(build_loader(config, assets))
    batches = [next(loader) for _ in range(3)]
    optimizer = build_optimizer(model, config.train)
    if "AdamW" in name:  # what build_optimizer gave before it fused the update
        optimizer = torch.optim.AdamW(optimizer.param_groups, foreach=False)
    return objective, optimizer, batches, config


def timed_steps(objective, optimizer, batches, config, probe: bool = False) -> float:
    weights = task_weights(0, config.train)
    params = [p for p in objective.parameters() if p.requires_grad]
    start = time.perf_counter()
    for batch in batches:
        total, losses = objective(batch, weights)
        if probe:
            task_gradient_norms(losses, weights, params)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / len(batches)


def run(quick: bool, out: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    batch, repeats = (8, 1) if quick else (64, 3)
    data = shapes_data(out / "shapes48", 48, n_train=max(200, 3 * batch))
    built = {name: parts(name, data, out, batch) for name in VARIANTS}
    times: dict[str, list[float]] = {name: [] for name in [*VARIANTS, "probe step"]}
    for _ in range(repeats):
        for name, part in built.items():
            times[name].append(timed_steps(*part))
        times["probe step"].append(timed_steps(*built["as shipped"], probe=True))
    best = {name: min(t) for name, t in times.items()}
    every = built["as shipped"][3].train.task_grad_norm_every or 1
    shipped = best["as shipped"]
    rows = [{"name": f"demo step, {name} vs as shipped", "peer": best[name], "tuwen": shipped,
             "ratio": best[name] / shipped, "unit": "s/step"} for name in VARIANTS
            if name != "as shipped"]
    probe = (best["probe step"] - shipped) / every
    rows.append({"name": f"demo step, no grad-norm probe vs probe every {every}",
                 "peer": shipped, "tuwen": shipped + probe,
                 "ratio": shipped / (shipped + probe), "unit": "s/step"})
    return {"batch": batch, "runs": times, "rows": rows}
