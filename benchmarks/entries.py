"""The named benchmarks: ``name -> run(options) -> result dict``.

A result may hold ``rows`` (name, peer, tuwen, ratio, unit[, tuwen_mfu, peer_mfu]) that the
entry point prints as a table; the rest is kept in the JSON as measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks import (
    extras,
    feature_cache,
    generation,
    generation_cache,
    loader_throughput,
    optimizer,
    precision,
    search,
    serving,
    training,
)


@dataclass(frozen=True)
class Options:
    quick: bool
    work: Path                 # this entry's data and runs
    threads: int
    steps: int | None = None   # training: steps per run, measured from step `first`
    first: int | None = None
    rounds: int | None = None
    precisions: tuple[str, ...] | None = None


def _training(o: Options) -> dict:
    return training.run(o.quick, o.work, o.threads, steps=o.steps, first=o.first,
                        rounds=o.rounds, precisions=o.precisions)


def _generation(o: Options) -> dict:
    return generation.run(o.quick, o.work, o.threads)


def _extras(o: Options) -> dict:
    return extras.run(o.quick, o.work, o.threads)


def _optimizer(o: Options) -> dict:
    return optimizer.run(o.quick, o.work, o.threads)


def _precision(o: Options) -> dict:
    """bf16 against fp32 on the shapes demo config (speed and validation loss)."""
    steps = ["--steps", "6", "--batch", "8"] if o.quick else []
    result = precision.main([*steps, "--out", str(o.work), "--threads", str(o.threads)])
    fp32, bf16 = result["fp32"]["samples_per_sec"], result["bf16"]["samples_per_sec"]
    return {**result, "rows": [{"name": "demo config bf16 vs fp32", "peer": 1 / fp32,
                                "tuwen": 1 / bf16, "ratio": fp32 and bf16 / fp32,
                                "unit": "s/sample"}]}


def _feature_cache(o: Options) -> dict:
    """Epoch time with and without the frozen-feature cache (train.feature_cache)."""
    size = ["--images", "32", "--batch", "16"] if o.quick else []
    result = feature_cache.main([*size, "--out", str(o.work), "--threads", str(o.threads)])
    plain, cached = result["epoch_wall_s_plain"][1:], result["epoch_wall_s_cached"][1:]
    return {**result, "rows": [{"name": "frozen-feature cache, epoch after the first",
                                "peer": sum(plain), "tuwen": sum(cached),
                                "ratio": sum(plain) / sum(cached), "unit": "s"}]}


def _generation_cache(o: Options) -> dict:
    """KV cache against re-running the prefix; needs a trained model (``make demo``)."""
    model = Path("runs/demo/model")
    if not model.is_dir():
        return {"skipped": f"needs a trained model in {model} (make demo)"}
    size = ["--images", "16", "--repeats", "1"] if o.quick else []
    rows = generation_cache.main([*size, "--model", str(model), "--threads", str(o.threads)])
    return {"rows": [{"name": f"KV cache {r['decoding']}", "peer": 1 / r["captions_per_s_no_cache"],
                      "tuwen": 1 / r["captions_per_s_cache"], "ratio": r["speedup"],
                      "unit": "s/caption"} for r in rows], "detail": rows}


def _loader(o: Options) -> dict:
    """Image decode + preprocess throughput against Hugging Face's CLIP processor."""
    size = ["--n", "64", "--repeats", "1", "--workers", "1"] if o.quick else []
    loader_throughput.main([*size, "--dir", str(o.work)])
    return {"note": "loader_throughput prints its own table (see the log)"}


def _search(o: Options) -> dict:
    """FAISS text-query latency and recall@10: exact against approximate (PQ re-ranked)."""
    size = ["--sizes", "20000", "--queries", "50"] if o.quick else []
    result = search.main([*size, "--threads", str(o.threads)])
    exact = {r["vectors"]: r for r in result["rows"] if r["index"].startswith("exact")}
    return {**result, "detail": result["rows"], "rows": [
        {"name": f"search {r['vectors']:,} vectors, {r['index']} {r['setting']} "
                 f"(recall@10 {r['recall_at_k']:.2f})",
         "peer": exact[r["vectors"]]["p99_ms"], "tuwen": r["p99_ms"],
         "ratio": exact[r["vectors"]]["p99_ms"] / max(r["p99_ms"], 1e-9), "unit": "ms p99"}
        for r in result["rows"] if not r["index"].startswith("exact")]}


def _serving(o: Options) -> dict:
    """tuwen serve under 1 and 16 concurrent caption clients; needs a trained model."""
    model, images = Path("runs/demo/model"), Path("data/shapes/images")
    if not model.is_dir() or not images.is_dir():
        return {"skipped": f"needs a trained model in {model} and {images} (make demo)"}
    seconds = ["--seconds", "5", "--clients", "1,4"] if o.quick else []
    result = serving.main(["--model", str(model), "--images", str(images), *seconds])
    one, many = result["rows"][0], result["rows"][-1]
    return {**result, "detail": result["rows"], "rows": [
        {"name": f"serving {many['clients']} clients vs 1 (throughput)",
         "peer": 1 / max(one["requests_per_s"], 1e-9),
         "tuwen": 1 / max(many["requests_per_s"], 1e-9),
         "ratio": result["throughput_ratio"], "unit": "s/request"}]}


ENTRIES = {"training": _training, "generation": _generation, "optimizer": _optimizer,
           "extras": _extras, "precision": _precision,
           "feature_cache": _feature_cache, "generation_cache": _generation_cache,
           "loader_throughput": _loader, "search": _search, "serving": _serving}


def descriptions() -> dict[str, str]:
    """Each entry's first docstring line."""
    docs = {"training": training.__doc__, "generation": generation.__doc__,
            "optimizer": optimizer.__doc__, "extras": extras.__doc__}
    return {name: (docs.get(name) or fn.__doc__ or name).strip().splitlines()[0]
            for name, fn in ENTRIES.items()}
