"""The ONNX backend against the PyTorch one: start-up of ``tuwen search`` and images/s.

    PYTHONPATH=src python benchmarks/onnx_backend.py MODEL EXPORT IMAGES --threads 1 2

MODEL is a saved model folder, EXPORT its ``tuwen export --format onnx`` folder, IMAGES a
folder of images. Prints one JSON line per measurement:

- ``startup``: wall time of a fresh ``python -m tuwen search IDX "a red circle" --backend B``
  (interpreter start, imports, model load, one query embedded, FAISS search), median of
  ``--repeats`` runs, over an index built once with the PyTorch model;
- ``throughput``: images/s of ``embed_images`` over the whole folder in batches of
  ``--batch-size``, end to end (file read, resize, normalise, model) and model only (the
  preprocessed pixels given), per thread count (torch.set_num_threads / onnxruntime's
  intra-op threads), best of ``--repeats``; the two backends take turns batch by batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tuwen.apps.index import scan
from tuwen.apps.onnx_backend import OnnxPipeline
from tuwen.apps.pipeline import Pipeline


def startup(model: Path, export: Path, images: Path, repeats: int) -> list[dict]:
    work = Path(tempfile.mkdtemp())
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "tuwen", "index", str(model), str(images), "--out",
                    str(work / "idx"), "--device", "cpu"], env=env, check=True,
                   capture_output=True)
    out = []
    for backend, extra in (("torch", ["--model", str(model), "--device", "cpu"]),
                           ("onnx", ["--model", str(export)])):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "tuwen", "search", str(work / "idx"),
                            "a red circle", "-k", "5", "--backend", backend, *extra],
                           env=env, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        out.append({"measure": "startup", "backend": backend,
                    "median_s": round(statistics.median(times), 3),
                    "runs_s": [round(t, 3) for t in times]})
    return out


def _interleaved(fns: dict, chunks: list, repeats: int) -> dict:
    """Seconds per backend over all ``chunks``, best of ``repeats``; the backends take turns
    chunk by chunk, so a change in the machine's load falls on both alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        spent = dict.fromkeys(fns, 0.0)
        for chunk in chunks:
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(chunk)
                spent[name] += time.perf_counter() - start
        best = {name: min(best[name], spent[name]) for name in fns}
    return best


def throughput(model: Path, export: Path, images: Path, threads: int, batch_size: int,
               repeats: int) -> list[dict]:
    files = [images / e.path for e in scan(images)]
    torch.set_num_threads(threads)
    torch_pipe = Pipeline.from_pretrained(model, device="cpu")
    onnx_pipe = OnnxPipeline.from_export(export, threads=threads)
    torch_pipe.batch_size = onnx_pipe.batch_size = batch_size
    pixels = np.stack([onnx_pipe.transform.array(onnx_pipe.load(f)) for f in files])
    spans = [slice(start, start + batch_size) for start in range(0, len(files), batch_size)]

    def torch_model_only(span):
        with torch.inference_mode():
            image = torch_pipe.model.encode_image(torch.from_numpy(pixels[span]))
            torch_pipe.model.itc_head.embed_image(image.pooled)

    end_to_end = _interleaved({"torch": lambda s: torch_pipe.embed_images(files[s]),
                               "onnx": lambda s: onnx_pipe.embed_images(files[s])},
                              spans, repeats)
    model_only = _interleaved({"torch": torch_model_only,
                               "onnx": lambda s: onnx_pipe.run_image(pixels[s])},
                              spans, repeats)
    return [{"measure": "throughput", "backend": backend, "what": what, "threads": threads,
             "images": len(files), "batch_size": batch_size,
             "images_per_s": round(len(files) / seconds[backend], 1)}
            for what, seconds in (("end_to_end", end_to_end), ("model_only", model_only))
            for backend in ("torch", "onnx")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("export", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-startup", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps({"load_before": os.getloadavg(), "cpu_count": os.cpu_count()}), flush=True)
    rows = [] if args.skip_startup else startup(args.model, args.export, args.images,
                                                args.repeats)
    for row in rows:
        print(json.dumps(row), flush=True)
    for threads in args.threads:
        for row in throughput(args.model, args.export, args.images, threads, args.batch_size,
                              args.repeats):
            print(json.dumps(row), flush=True)
    print(json.dumps({"load_after": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
