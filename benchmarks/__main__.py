"""tuwen's benchmarks, one entry point:

  python -m benchmarks                      # every entry, full size
  python -m benchmarks --quick              # small sizes: a smoke run in a few minutes
  python -m benchmarks --only training      # one entry (see --list)

Each entry writes benchmarks/results/<name>.json (or --results DIR) and the run ends with a
markdown table of ratios (peer or baseline time / tuwen time: > 1 means tuwen is faster).
On a shared machine pass --threads 1: every process then gets the same single thread.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from benchmarks import entries


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--only", action="append", choices=sorted(entries.ENTRIES),
                        help="run this entry (repeatable); default: all")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads in every process (default: all cores)")
    parser.add_argument("--results", default="benchmarks/results", help="where the JSON goes")
    parser.add_argument("--work", default="runs/benchmarks", help="data and runs")
    parser.add_argument("--list", action="store_true", help="list the entries and exit")
    parser.add_argument("--steps", type=int, help="training: steps per run (default 40)")
    parser.add_argument("--first", type=int, help="training: time from this step (default 10)")
    parser.add_argument("--rounds", type=int, help="training: peer/tuwen rounds (default 3)")
    parser.add_argument("--precision", action="append", choices=("fp32", "bf16"),
                        help="training: only this precision (repeatable; default both)")
    return parser.parse_args(argv)


def table(results: dict[str, dict]) -> str:
    lines = ["| benchmark | peer / baseline | tuwen | ratio | tuwen MFU | peer MFU |",
             "|---|---|---|---|---|---|"]
    for result in results.values():
        for row in result.get("rows", []):
            mfu = [f"{row[k]:.0%}" if k in row else "" for k in ("tuwen_mfu", "peer_mfu")]
            lines.append(f"| {row['name']} | {row['peer']:.4g} {row['unit']} | "
                         f"{row['tuwen']:.4g} {row['unit']} | {row['ratio']:.2f}x | "
                         f"{mfu[0]} | {mfu[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = parse(argv)
    if args.list:
        print("\n".join(f"{name}: {doc}" for name, doc in entries.descriptions().items()))
        return {}
    results_dir, work = Path(args.results), Path(args.work)
    results_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.only or list(entries.ENTRIES):
        start = time.perf_counter()
        options = entries.Options(args.quick, work / name, args.threads, args.steps, args.first,
                                  args.rounds, tuple(args.precision or ()) or None)
        result = entries.ENTRIES[name](options)
        result = {"name": name, "quick": args.quick, "threads": args.threads,
                  "seconds": round(time.perf_counter() - start, 1), **result}
        (results_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
        results[name] = result
    print(table(results))
    return results


if __name__ == "__main__":
    main()
