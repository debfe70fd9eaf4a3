"""Search latency of tuwen's FAISS indexes: exact inner product against the approximate ones.

Stores N random unit vectors of the model's embedding size, builds the indexes exactly as
``tuwen index`` does (``apps.index.build_faiss``), then times one query at a time (a text
query's embedding is one vector) and measures the approximate index's recall@k against the
exact one, for each ``--rerank`` (PQ), ``--ef-search`` (HNSW) or ``--probe`` (IVF) setting:

  python -m benchmarks.search --sizes 100000,1000000 --dim 128

Writes benchmarks/results/search.json (``--name``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from tuwen.apps.index import IndexOptions, build_faiss

RESULTS = Path(__file__).parent / "results"


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def time_queries(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids (Q, k) and per-query milliseconds, one query per call."""
    ids, ms = [], []
    for q in queries:
        start = time.perf_counter()
        _, found = index.search(q[None], k)
        ms.append((time.perf_counter() - start) * 1000)
        ids.append(found[0])
    return np.stack(ids), np.asarray(ms)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def row(size: int, kind: str, setting: str, ms: np.ndarray, rec: float, build_s: float) -> dict:
    return {"vectors": size, "index": kind, "setting": setting,
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "recall_at_k": round(rec, 4), "build_s": round(build_s, 1)}


def bench_size(size: int, args) -> list[dict]:
    vectors = unit_vectors(size, args.dim, seed=0)
    queries = unit_vectors(args.queries, args.dim, seed=1)
    start = time.perf_counter()
    exact = build_faiss(vectors, IndexOptions(exact_below=size + 1))
    truth, ms = time_queries(exact, queries, args.k)
    rows = [row(size, "exact (IndexFlatIP)", "-", ms, 1.0, time.perf_counter() - start)]
    for kind in filter(None, args.approximate.split(",")):
        options = IndexOptions(exact_below=0, approximate=kind, hnsw_m=args.hnsw_m)
        start = time.perf_counter()
        index = build_faiss(vectors, options)
        build_s = time.perf_counter() - start
        for value in {"pq": args.rerank, "hnsw": args.ef_search, "ivf": args.probe}[kind]:
            if kind == "pq":
                index.k_factor, setting = value, f"4-bit codes, re-rank {value} x k"
            elif kind == "hnsw":
                index.hnsw.efSearch, setting = value, f"M={args.hnsw_m}, efSearch={value}"
            else:
                index.nprobe, setting = value, f"nlist={index.nlist}, nprobe={value}"
            found, ms = time_queries(index, queries, args.k)
            rows.append(row(size, kind, setting, ms, recall(found, truth), build_s))
        del index
    return rows


def table(rows: list[dict], k: int) -> str:
    lines = [f"| vectors | index | setting | p50 ms | p99 ms | recall@{k} | build s |",
             "|---:|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['vectors']:,} | {r['index']} | {r['setting']} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['recall_at_k']} | {r['build_s']} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dim", type=int, default=128, help="the demo model's embed_dim")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--approximate", default="pq",
                        help="pq, hnsw and/or ivf, comma-separated ('' for exact alone)")
    parser.add_argument("--rerank", default="20,50,100", help="pq: candidates per result")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-search", default="64,128,256")
    parser.add_argument("--probe", default="16,64")
    parser.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads")
    parser.add_argument("--name", default="search", help="results/NAME.json")
    args = parser.parse_args(argv)
    args.ef_search = [int(v) for v in args.ef_search.split(",")]
    args.probe = [int(v) for v in args.probe.split(",")]
    args.rerank = [int(v) for v in args.rerank.split(",")]
    import faiss

    faiss.omp_set_num_threads(args.threads)
    rows = [r for size in args.sizes.split(",") for r in bench_size(int(size), args)]
    result = {"benchmark": "search", "dim": args.dim, "queries": args.queries, "k": args.k,
              "threads": args.threads, "faiss": faiss.__version__, "rows": rows,
              "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    print(table(rows, args.k))
    return result


if __name__ == "__main__":
    main()
