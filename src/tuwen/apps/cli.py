"""The ``tuwen`` command: a thin shell over library functions.

Errors from bad input (``TuwenError``) are printed as one line, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tuwen.errors import TuwenError

DEFAULT_CONFIG = "configs/shapes.yaml"
DEMO_MINUTES = 6.5


def _config_path(path: str | None) -> str | None:
    if path is not None:
        return path
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None


def cmd_data_shapes(args: argparse.Namespace) -> None:
    from tuwen.data.shapes import generate_shapes

    counts = {k: v for k, v in (("n_train", args.n_train), ("n_val", args.n_val),
                                ("n_test", args.n_test), ("n_test_novel", args.n_test_novel))
              if v is not None}
    manifest = generate_shapes(args.dir, seed=args.seed, image_size=args.image_size, **counts)
    print(f"wrote shapes data to {args.dir}: " + json.dumps(
        {k: manifest[k] for k in manifest if k.startswith("n_")}))


def cmd_train(args: argparse.Namespace) -> None:
    from tuwen.config import load_config
    from tuwen.training.loop import train

    config = load_config(args.config, args.set)
    result = train(config, args.out, resume=args.resume)
    print(f"trained {result.steps} steps in {result.elapsed_s / 60:.1f} min, "
          f"stopped by {result.stopped_by}; model in {result.model_dir}")


def cmd_eval(args: argparse.Namespace) -> None:
    from tuwen.apps.demo import results_table
    from tuwen.evaluation.evaluate import evaluate_run

    tasks = args.tasks.split(",") if args.tasks else None
    metrics = evaluate_run(args.run, args.split, tasks=tasks, overrides=args.set)
    print(results_table({args.split: metrics}))
    print(f"\nwrote {Path(args.run) / 'eval' / args.split}/metrics.json and predictions.jsonl")


def cmd_demo(args: argparse.Namespace) -> None:
    from tuwen.apps.demo import run_demo
    from tuwen.config import load_config

    overrides = list(args.set)
    if args.minutes is not None:
        overrides.append(f"train.max_minutes={args.minutes}")
    if args.data is not None:
        overrides.append(f"data.root={args.data}")
    config = load_config(_config_path(args.config), overrides)
    counts = {"n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test,
              "n_test_novel": args.n_test_novel}
    run_demo(Path(args.out), config, data_seed=args.seed,
             counts={k: v for k, v in counts.items() if v is not None})


def cmd_caption(args: argparse.Namespace) -> None:
    from tuwen.apps.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(args.model)
    for image, text in zip(args.images, pipe.caption(args.images, decoding=args.decoding)):
        print(f"{image}\t{text}")


def cmd_ask(args: argparse.Namespace) -> None:
    from tuwen.apps.pipeline import Pipeline

    print(Pipeline.from_pretrained(args.model).ask([args.image], [args.question])[0])


def _add_counts(p: argparse.ArgumentParser) -> None:
    for name in ("train", "val", "test", "test_novel"):
        p.add_argument(f"--n-{name.replace('_', '-')}", dest=f"n_{name}", type=int,
                       help=f"number of {name} images")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuwen", description="image-text joint training")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command",
                                                                  required=True)
    shapes = data.add_parser("shapes", help="generate the synthetic shapes dataset")
    shapes.add_argument("dir")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--image-size", type=int, default=64)
    _add_counts(shapes)
    shapes.set_defaults(func=cmd_data_shapes)

    train = sub.add_parser("train", help="joint training from a YAML config")
    train.add_argument("config")
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a run on a split")
    ev.add_argument("run")
    ev.add_argument("--split", default="test")
    ev.add_argument("--tasks", help="comma-separated subset of caption,retrieval,vqa")
    ev.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    ev.set_defaults(func=cmd_eval)

    demo = sub.add_parser("demo", help="data + training + evaluation in one go")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--config", help=f"YAML config (default: {DEFAULT_CONFIG} if present)")
    demo.add_argument("--data", help="shapes data folder (default: data.root of the config)")
    demo.add_argument("--minutes", type=float, default=DEMO_MINUTES,
                      help=f"wall-clock training budget (default {DEMO_MINUTES}: the whole demo "
                           "then fits in 10 minutes on 2 cores)")
    demo.add_argument("--seed", type=int, default=0, help="data generator seed")
    demo.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    _add_counts(demo)
    demo.set_defaults(func=cmd_demo)

    cap = sub.add_parser("caption", help="caption images with a saved model")
    cap.add_argument("model")
    cap.add_argument("images", nargs="+")
    cap.add_argument("--decoding", choices=["greedy", "beam"], default="beam")
    cap.set_defaults(func=cmd_caption)

    ask = sub.add_parser("ask", help="answer a question about an image")
    ask.add_argument("model")
    ask.add_argument("image")
    ask.add_argument("question")
    ask.set_defaults(func=cmd_ask)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except TuwenError as err:
        print(f"tuwen: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tuwen: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
