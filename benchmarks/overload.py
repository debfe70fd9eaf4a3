"""Overload test of ``tuwen serve`` on loopback: a flood of caption requests at a multiple of
the measured capacity, and the latency before and after it.

Starts ``tuwen serve MODEL`` as its own process (127.0.0.1, a free port), then:

1. capacity: for each of ``--capacity-clients`` (16,64), that many closed-loop clients for
   ``--capacity-seconds``; the most 200s per second of those levels are the capacity C;
2. before: one client, one request at a time, for ``--probe-seconds`` (p50/p99);
3. flood: requests arriving at ``--factor`` x C per second for ``--seconds`` (open loop:
   each starts at its scheduled time whatever the server does, and its latency counts from
   then), each on a new connection;
4. after: as before, once the flood's last answer is in.

Every answer is counted by kind: 200, 503 with a Retry-After header, 503 without, 504, other
statuses, and timeouts (no answer within the server's timeout + 5 s) and connection errors.
The server's RSS is sampled every 0.1 s (peak per phase), and its VmHWM read at the end; the
CPU seconds of the server and of this client are counted per phase.

Why not locust: its users are closed loop (a user waits for its answer before the next
request), so under overload the offered rate falls to what the server answers, and "4x
capacity" is never offered (coordinated omission): the capacity rows show it, their offered
rate is their answered rate whatever the number of users. The client is raw HTTP/1.1 on
asyncio streams, so its own CPU cost per request stays small beside the server on the same
cores (the client CPU column).

  python -m benchmarks.overload --model RUN/model --images DIR --factor 4 --seconds 60

Writes benchmarks/results/overload.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.serving import free_port

RESULTS = Path(__file__).parent / "results"
HOST = "127.0.0.1"


def caption_request(port: int, image: bytes, key: str | None) -> bytes:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"'
            f'\r\nContent-Type: image/png\r\n\r\n').encode() + image + \
        f"\r\n--{boundary}--\r\n".encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (f"POST /v1/caption HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


@dataclass
class Outcome:
    kind: str          # "200", "503+retry", "503", "504", "status NNN", "timeout", "error"
    seconds: float


async def send(port: int, request: bytes, timeout: float) -> str:
    """One request on a new connection; the kind of its answer."""
    async def exchange() -> str:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(request)
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            status = int(head.split(" ", 2)[1])
            length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")
                           if line.startswith("content-length:")), None)
            await (reader.readexactly(length) if length is not None else reader.read())
            if status == 503:
                return "503+retry" if "\r\nretry-after:" in head else "503"
            return str(status) if status in (200, 504) else f"status {status}"
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(exchange(), timeout)
    except asyncio.TimeoutError:
        return "timeout"
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        return "error"


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    offered_per_s: float | None = None
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0

    def row(self) -> dict:
        kinds = Counter(o.kind for o in self.outcomes)
        ok = np.asarray([o.seconds for o in self.outcomes if o.kind == "200"]) * 1000
        busy = np.asarray([o.seconds for o in self.outcomes if o.kind.startswith("503")]) * 1000

        def pct(values, q):
            return round(float(np.percentile(values, q)), 1) if len(values) else None

        return {"phase": self.name, "seconds": round(self.seconds, 1),
                "offered_per_s": self.offered_per_s, "requests": len(self.outcomes),
                "ok_200": kinds["200"], "busy_503_retry_after": kinds["503+retry"],
                "busy_503_without_retry_after": kinds["503"], "timeout_504": kinds["504"],
                "client_timeouts": kinds["timeout"], "connection_errors": kinds["error"],
                "other": {k: v for k, v in kinds.items() if k.startswith("status")},
                "ok_per_s": round(kinds["200"] / self.seconds, 2) if self.seconds else None,
                "p50_ms": pct(ok, 50), "p99_ms": pct(ok, 99), "max_ms": pct(ok, 100),
                "busy_p50_ms": pct(busy, 50), "busy_max_ms": pct(busy, 100),
                "peak_rss_mib": round(self.peak_rss_mib, 1),
                "client_cpu_s": round(self.client_cpu_s, 1),
                "server_cpu_s": round(self.server_cpu_s, 1)}


class Flood:
    def __init__(self, port: int, requests: list[bytes], timeout: float, server_pid: int):
        self.port, self.requests, self.timeout = port, requests, timeout
        self.pid, self.phase = server_pid, None

    async def one(self, i: int, start: float) -> None:
        kind = await send(self.port, self.requests[i % len(self.requests)], self.timeout)
        self.phase.outcomes.append(Outcome(kind, time.perf_counter() - start))

    async def closed(self, phase: Phase, clients: int, seconds: float) -> Phase:
        """``clients`` callers, each sending its next request when answered."""
        self.phase, stop = phase, time.perf_counter() + seconds

        async def caller(c: int) -> None:
            i = c * 7
            while time.perf_counter() < stop:
                await self.one(i, time.perf_counter())
                i += 1
        await self.timed(phase, asyncio.gather(*(caller(c) for c in range(clients))))
        phase.offered_per_s = round(len(phase.outcomes) / phase.seconds, 2)  # = answered
        return phase

    async def open(self, phase: Phase, rate: float, seconds: float) -> Phase:
        """Requests that start at ``rate`` per second whatever the server does."""
        self.phase, phase.offered_per_s = phase, round(rate, 2)

        async def schedule() -> None:
            tasks, begin, i = [], time.perf_counter(), 0
            while i / rate < seconds:
                due = begin + i / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tasks.append(asyncio.create_task(self.one(i, due)))
                i += 1
            await asyncio.gather(*tasks)
        return await self.timed(phase, schedule())

    async def timed(self, phase: Phase, work) -> Phase:
        import psutil

        server = psutil.Process(self.pid)
        sampler = asyncio.create_task(self.sample_rss(phase))
        start, client, used = time.perf_counter(), time.process_time(), server.cpu_times()
        await work
        phase.seconds = time.perf_counter() - start
        phase.client_cpu_s = time.process_time() - client
        now = server.cpu_times()
        phase.server_cpu_s = now.user + now.system - used.user - used.system
        sampler.cancel()
        return phase

    async def sample_rss(self, phase: Phase) -> None:
        import psutil

        process = psutil.Process(self.pid)
        while True:
            phase.peak_rss_mib = max(phase.peak_rss_mib, process.memory_info().rss / 2**20)
            await asyncio.sleep(0.1)


def start_server(args, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "tuwen", "serve", args.model, "--host", HOST,
               "--port", str(port), "--device", "cpu", "--log-level", "error",
               "--timeout-s", str(args.timeout_s)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return subprocess.Popen(command, env=env)


def wait_ready(port: int, timeout: float = 300) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("GET", "/v1/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the server on port {port} did not answer within {timeout} s")


def vm_hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def measure(args, port: int, pid: int) -> dict:
    paths = sorted(Path(args.images).glob("*.png"))[: args.n_images]
    if not paths:
        raise SystemExit(f"no PNG images in {args.images}")
    requests = [caption_request(port, p.read_bytes(), None) for p in paths]
    flood = Flood(port, requests, args.timeout_s + 5, pid)
    await flood.closed(Phase("warm-up"), 1, 5)
    levels = [await flood.closed(Phase(f"capacity, {n} closed-loop users"), n,
                                 args.capacity_seconds)
              for n in (int(c) for c in args.capacity_clients.split(","))]
    rate = max(level.row()["ok_per_s"] for level in levels)
    phases = [*levels, await flood.closed(Phase("before"), 1, args.probe_seconds),
              await flood.open(Phase("flood"), args.factor * rate, args.seconds),
              await flood.closed(Phase("after"), 1, args.probe_seconds)]
    return {"capacity_per_s": rate, "rows": [p.row() for p in phases]}


def table(rows: list[dict]) -> str:
    lines = ["| phase | s | offered /s | requests | 200 | 503 + Retry-After | 503 without | "
             "504 | timeouts | errors | 200s /s | p50 ms | p99 ms | 503 p50 ms | peak RSS MiB | "
             "server CPU s | client CPU s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
             "---:|"]
    for r in rows:
        lines.append(
            f"| {r['phase']} | {r['seconds']} | {r['offered_per_s'] or ''} | {r['requests']} | "
            f"{r['ok_200']} | {r['busy_503_retry_after']} | {r['busy_503_without_retry_after']}"
            f" | {r['timeout_504']} | {r['client_timeouts']} | {r['connection_errors']} | "
            f"{r['ok_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['busy_p50_ms'] or ''} | "
            f"{r['peak_rss_mib']} | {r['server_cpu_s']} | {r['client_cpu_s']} |")
    return "\n".join(lines)


def run(args) -> dict:
    port = free_port()
    server = start_server(args, port)
    try:
        wait_ready(port)
        result = asyncio.run(measure(args, port, server.pid))
        result["server_vm_hwm_mib"] = vm_hwm_mib(server.pid)
        result["server_alive_after"] = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=60)
    rows = {r["phase"]: r for r in result["rows"]}
    before, after = rows["before"]["p50_ms"], rows["after"]["p50_ms"]
    result.update({"benchmark": "overload", "model": str(Path(args.model).resolve()),
                   "factor": args.factor, "flood_seconds": args.seconds,
                   "timeout_s": args.timeout_s, "cpu_count": os.cpu_count(),
                   "load_average": os.getloadavg(),
                   "p50_after_over_before": round(after / before, 3) if before else None})
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="saved model folder (RUN/model)")
    parser.add_argument("--images", required=True, help="folder of PNG images to caption")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--factor", type=float, default=4.0, help="flood rate / capacity")
    parser.add_argument("--seconds", type=float, default=60, help="flood duration")
    parser.add_argument("--capacity-clients", default="16,64",
                        help="closed-loop user counts; the best throughput is the capacity")
    parser.add_argument("--capacity-seconds", type=float, default=20)
    parser.add_argument("--probe-seconds", type=float, default=15)
    parser.add_argument("--timeout-s", type=float, default=30, help="the server's timeout")
    parser.add_argument("--threads", type=int, help="the server's OMP_NUM_THREADS")
    parser.add_argument("--out", default=str(RESULTS / "overload.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    result = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(table(result["rows"]))
    print(f"\ncapacity {result['capacity_per_s']} captions/s; flood at {args.factor}x; "
          f"server VmHWM {result['server_vm_hwm_mib']} MiB; p50 after / before "
          f"{result['p50_after_over_before']}")
    return result


if __name__ == "__main__":
    main()
