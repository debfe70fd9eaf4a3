"""Load test of ``tuwen serve`` on loopback: caption requests from 1 and from N concurrent
clients, each for a fixed time.

Starts ``tuwen serve MODEL`` as a separate process on 127.0.0.1 (a free port), waits for
``/v1/health``, then for each client count runs that many concurrent clients (asyncio,
httpx), each posting one image to ``/v1/caption`` and, when answered, the next, for
``--seconds``. Reports requests/s, latency p50/p95/p99, errors (any non-200), the server's
model calls by batch size, and the throughput ratio of the most clients to one:

  python -m benchmarks.serving --model runs/demo/model --images data/shapes/images \\
      --clients 1,16 --seconds 60

Writes benchmarks/results/serving.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "tuwen", "serve", args.model, "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", "--log-level", "warning",
               "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    return subprocess.Popen(command, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})


async def wait_ready(client, url: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = await client.get(url + "/v1/health")
            if response.status_code == 200:
                return response.json()
        except Exception:  # not listening yet
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the server at {url} did not answer within {timeout} s")


async def one_client(client, url: str, images: list[bytes], stop: float, offset: int,
                     latencies: list, errors: list) -> None:
    i = offset
    while time.monotonic() < stop:
        data = images[i % len(images)]
        start = time.perf_counter()
        try:
            response = await client.post(url + "/v1/caption",
                                         files={"image": ("x.png", data, "image/png")})
            ok = response.status_code == 200
        except Exception as err:
            ok, response = False, err
        (latencies if ok else errors).append(
            time.perf_counter() - start if ok else str(getattr(response, "status_code", response)))
        i += 1


async def load(url: str, images: list[bytes], clients: int, seconds: float) -> dict:
    import httpx

    latencies, errors = [], []
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        before = (await client.get(url + "/v1/health")).json()["batches"]["caption"]
        start = time.monotonic()
        await asyncio.gather(*(one_client(client, url, images, start + seconds, c * 7,
                                          latencies, errors) for c in range(clients)))
        elapsed = time.monotonic() - start
        after = (await client.get(url + "/v1/health")).json()["batches"]["caption"]
    calls = {int(k): v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    ms = np.asarray(latencies) * 1000
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(latencies),
            "requests_per_s": round(len(latencies) / elapsed, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "errors": len(errors), "error_kinds": sorted(set(errors))[:5],
            "mean_batch": round(sum(k * v for k, v in calls.items()) /
                                max(sum(calls.values()), 1), 2),
            "model_calls_by_batch_size": dict(sorted(calls.items()))}


def table(rows: list[dict]) -> str:
    lines = ["| clients | requests/s | p50 ms | p95 ms | p99 ms | errors | mean batch |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['clients']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p95_ms']} | "
              f"{r['p99_ms']} | {r['errors']} | {r['mean_batch']} |" for r in rows]
    return "\n".join(lines)


async def run(args) -> dict:
    import httpx

    paths = sorted(Path(args.images).glob("*.png"))[: args.n_images]
    if not paths:
        raise SystemExit(f"no PNG images in {args.images}")
    images = [p.read_bytes() for p in paths]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args, port)
    try:
        async with httpx.AsyncClient() as client:
            health = await wait_ready(client, url)
        rows = []
        for clients in (int(c) for c in args.clients.split(",")):
            rows.append(await load(url, images, clients, args.seconds))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    ratio = rows[-1]["requests_per_s"] / max(rows[0]["requests_per_s"], 1e-9)
    return {"benchmark": "serving", "model": str(Path(args.model).resolve()),
            "model_id": health["model_id"], "seconds_per_level": args.seconds,
            "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
            "cpu_count": os.cpu_count(), "rows": rows,
            "throughput_ratio": round(ratio, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="saved model folder (RUN/model)")
    parser.add_argument("--images", required=True, help="folder of PNG images to caption")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(result, indent=2))
    print(table(result["rows"]))
    print(f"\nthroughput ratio {result['rows'][-1]['clients']} clients / 1: "
          f"{result['throughput_ratio']}x")
    return result


if __name__ == "__main__":
    main()
