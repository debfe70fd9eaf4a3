"""The ``tuwen`` command: a thin shell over library functions.

Errors from bad input (``TuwenError``) are printed as one line, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings
from pathlib import Path

from tuwen.errors import TuwenError, TuwenWarning

# leaves time for data generation and evaluation within about ten minutes on two CPU cores
# (docs/experiments/2026-11-29-demo-config-history.md)
DEMO_MINUTES = 7.5


def cmd_data_shapes(args: argparse.Namespace) -> None:
    from tuwen.data.shapes import generate_shapes

    counts = {k: v for k, v in (("n_train", args.n_train), ("n_val", args.n_val),
                                ("n_test", args.n_test), ("n_test_novel", args.n_test_novel))
              if v is not None}
    manifest = generate_shapes(args.dir, seed=args.seed, image_size=args.image_size, **counts)
    print(f"wrote shapes data to {args.dir}: " + json.dumps(
        {k: manifest[k] for k in manifest if k.startswith("n_")}))


def cmd_data_shapes_classes(args: argparse.Namespace) -> None:
    from tuwen.data.shapes import write_class_folders

    counts = write_class_folders(args.shapes_dir, args.out, args.split)
    print(f"wrote {sum(counts.values())} images in {len(counts)} class folders to {args.out}")


def cmd_data_check(args: argparse.Namespace) -> int:
    from tuwen.data.doctor import check_data
    from tuwen.data.doctor_report import format_table, write_report
    from tuwen.tasks.table import load_run_config

    config = load_run_config(args.config, args.set)
    splits = args.splits.split(",") if args.splits else None
    report = check_data(config, splits=splits, min_side=args.min_side)
    print(format_table(report))
    print(f"wrote {write_report(report, args.out or config.data.root)}")
    return 0 if report["ok"] else 1


def cmd_train(args: argparse.Namespace) -> int:
    from tuwen.apps.training import record_training, validation_metrics
    from tuwen.tasks.table import load_run_config
    from tuwen.training.loop import train

    config = load_run_config(args.config, args.set)
    if args.dry_run:
        from tuwen.apps.dry_run import dry_run

        print("\n".join(dry_run(config, seed=config.train.seed).lines()))
        return 0
    if args.out is None:
        raise TuwenError("tuwen train: --out RUN is required (except with --dry-run)")
    evaluate = validation_metrics(config, Path(args.out)) if config.train.eval_every else None
    result = train(config, args.out, resume=args.resume, evaluate=evaluate)
    record_training(config, result)
    if result.stopped_by in ("SIGTERM", "SIGINT"):  # preempted: checkpoint saved, exit 128+N
        print(f"stopped by {result.stopped_by} at step {result.steps}; checkpoint saved in "
              f"{result.run_dir / 'checkpoints'}; continue with --resume")
        return 128 + signal.Signals[result.stopped_by].value
    print(f"trained {result.steps} steps in {result.elapsed_s / 60:.1f} min, "
          f"stopped by {result.stopped_by}; model in {result.model_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> None:
    from tuwen.apps.demo import results_table
    from tuwen.evaluation.evaluate import evaluate_run

    tasks = args.tasks.split(",") if args.tasks else None
    metrics = evaluate_run(args.run, args.split, tasks=tasks, overrides=args.set)
    print(results_table({args.split: metrics}))
    if (collapse := eval_collapse(Path(args.run) / "eval" / args.split)) is not None:
        print(f"\nwarning: {collapse}: the model says much the same for every image")
    print(f"\nwrote {Path(args.run) / 'eval' / args.split}/metrics.json, predictions.jsonl, "
          "report.html and attention/*.png")


def eval_collapse(eval_dir: Path) -> str | None:
    """The collapse verdict on an evaluation's captions, or None."""
    from tuwen.evaluation.analysis import collapse_note, read_jsonl

    predictions = eval_dir / "predictions.jsonl"
    if not predictions.is_file():
        return None
    return collapse_note(read_jsonl(predictions, required=("task",)))


def cmd_demo(args: argparse.Namespace) -> None:
    from tuwen.apps.demo import demo_config_path, run_demo
    from tuwen.tasks.table import load_run_config

    overrides = list(args.set)
    if args.minutes is not None:
        overrides.append(f"train.max_minutes={args.minutes}")
    if args.data is not None:
        overrides.append(f"data.root={args.data}")
    config = load_run_config(demo_config_path(args.config), overrides)
    counts = {"n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test,
              "n_test_novel": args.n_test_novel}
    run_demo(Path(args.out), config, data_seed=args.seed,
             counts={k: v for k, v in counts.items() if v is not None})


def _pipeline(args: argparse.Namespace):
    from tuwen.apps.pipeline import Pipeline

    return Pipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype)


def cmd_caption(args: argparse.Namespace) -> None:
    captions = _pipeline(args).caption(args.images, decoding=args.decoding,
                                       beam_size=args.beam_size, max_length=args.max_length)
    for image, text in zip(args.images, captions):
        print(f"{image}\t{text}")


def cmd_ask(args: argparse.Namespace) -> None:
    from tuwen.apps.conversation import read_history, write_history

    history = read_history(args.history) if args.history else []
    answer = _pipeline(args).answer([args.image], [args.question], top_k=args.top,
                                    histories=[history])[0]
    print(answer.text)
    if args.history:  # the next `tuwen ask --history FILE` continues the conversation
        write_history(args.history, [*history, ("user", args.question.strip()),
                                     ("assistant", answer.text)])
    if args.top > 1:
        for text, prob in answer.alternatives:
            print(f"  {prob:.3f}\t{text}")


def cmd_classify(args: argparse.Namespace) -> None:
    labels = _lines(args.labels, "--labels")
    templates = _lines(args.templates, "--templates") if args.templates else None
    pipe = _pipeline(args)
    options = {} if templates is None else {"templates": templates}
    for image, ranked in zip(args.images, pipe.classify(args.images, labels, top_k=args.top,
                                                        **options)):
        print(f"{image}\t{ranked[0][0]}\t" + "  ".join(f"{p:.3f} {name}" for name, p in ranked))


def _lines(path: str, flag: str) -> list[str]:
    """The non-empty lines of a text file (class names, templates)."""
    file = Path(path)
    if not file.is_file():
        raise TuwenError(f"{flag} {path}: file not found")
    lines = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not lines:
        raise TuwenError(f"{flag} {path}: no lines in the file")
    return lines


def _add_inference(sub: argparse._SubParsersAction) -> None:
    cap = sub.add_parser("caption", help="caption images with a saved model")
    cap.add_argument("model")
    cap.add_argument("images", nargs="+")
    cap.add_argument("--decoding", choices=["greedy", "beam", "top_p"], default="beam")
    cap.add_argument("--beam-size", type=int, default=3)
    cap.add_argument("--max-length", type=int, default=30, help="most tokens per caption")
    cap.set_defaults(func=cmd_caption)
    ask = sub.add_parser("ask", help="answer a question about an image")
    ask.add_argument("model")
    ask.add_argument("image")
    ask.add_argument("question")
    ask.add_argument("--top", type=int, default=1,
                     help="also print the N most likely answers with their probabilities")
    ask.add_argument("--history", metavar="FILE",
                     help="a JSON file of the conversation's earlier turns ([{\"role\": "
                          "\"user\"|\"assistant\", \"content\": ...}]; created when "
                          "missing): the question is its next turn, and the question and "
                          "answer are appended to it")
    ask.set_defaults(func=cmd_ask)
    cls = sub.add_parser("classify", help="zero-shot classification of images among labels")
    cls.add_argument("model")
    cls.add_argument("images", nargs="+")
    cls.add_argument("--labels", required=True, help="a text file, one class name per line")
    cls.add_argument("--templates", help="a text file of prompt templates, one per line, "
                                         "each with '{}' for the class name (default: "
                                         "'a photo of a {}.' and three more)")
    cls.add_argument("--top", type=int, default=5, help="the N most likely labels to print")
    cls.set_defaults(func=cmd_classify)
    for p in (cap, ask, cls):
        p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: a GPU if there is one)")
        p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default fp32")


def _embedder(args: argparse.Namespace, model: str, device: str | None = None):
    """The model that embeds: a Pipeline (torch) or, with --backend onnx, an export folder
    read by onnxruntime (no torch imported)."""
    if args.backend == "onnx":
        from tuwen.apps.onnx_backend import OnnxPipeline

        return OnnxPipeline.from_export(model)
    from tuwen.apps.pipeline import Pipeline

    return Pipeline.from_pretrained(model, device=device, dtype=getattr(args, "dtype", None))


def cmd_index(args: argparse.Namespace) -> None:
    from tuwen.apps.index import IndexOptions, build_index
    from tuwen.apps.index_shards import Ranks

    options = IndexOptions(exact_below=args.exact_below, approximate=args.approximate)
    ranks = Ranks.from_environment()  # this process's rank and device under a launcher
    pipe = _embedder(args, args.model, device=args.device or ranks.device)
    report = build_index(pipe, args.model, args.image_dir, args.out, options,
                         batch_size=args.batch_size, ranks=ranks)
    if report is not None:  # the process that wrote the index
        for line in report.skipped:
            print(f"skipped: {line}", file=sys.stderr)
        print(f"{report.summary()}; index in {args.out}")


def cmd_search(args: argparse.Namespace) -> None:
    from tuwen.apps.search import ImageIndex, search_index

    if (args.query is None) == (args.image is None):
        raise TuwenError("tuwen search: give a text QUERY or --image IMG (one of the two)")
    index = ImageIndex(args.index)
    pipe = _embedder(args, args.model or index.model_dir, device=args.device)
    hits = search_index(index, pipe, query=args.query, image=args.image, k=args.k)
    if args.json:
        print(json.dumps([{**hit.__dict__, "path": str(index.root / hit.path)} for hit in hits]))
        return
    for hit in hits:
        print(f"{hit.rank}\t{hit.score:.4f}\t{index.root / hit.path}")


def _add_search(sub: argparse._SubParsersAction) -> None:
    idx = sub.add_parser("index", help="embed a folder of images (recursively) for search; "
                                       "a re-run embeds only new or changed files")
    idx.add_argument("model", help="saved model folder (RUN/model), or with --backend onnx "
                                   "an export folder (tuwen export --format onnx)")
    idx.add_argument("image_dir")
    idx.add_argument("--out", required=True, help="index folder (created or updated)")
    idx.add_argument("--batch-size", type=int, default=64)
    idx.add_argument("--exact-below", type=int, default=100_000,
                     help="exact inner-product search below this many images (default 100000)")
    idx.add_argument("--approximate", choices=["pq", "hnsw", "ivf"], default="pq",
                     help="the approximate index above that size (default pq)")
    idx.add_argument("--device", help="cpu, cuda ... (default: a GPU if there is one; under "
                                      "torchrun each process its own)")
    idx.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default fp32")
    idx.set_defaults(func=cmd_index)
    se = sub.add_parser("search", help="images of an index that best match a text or an image")
    se.add_argument("index", help="index folder (tuwen index --out)")
    se.add_argument("query", nargs="?", help="text query")
    se.add_argument("--image", help="search by this image instead of a text")
    se.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    se.add_argument("--json", action="store_true", help="print JSON instead of lines")
    se.add_argument("--model", help="model folder, or with --backend onnx an export folder "
                                    "(default: the one that built the index)")
    se.add_argument("--device", help="cpu, cuda ... (default: a GPU if there is one)")
    se.set_defaults(func=cmd_search)
    for p in (idx, se):
        p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                       help="embed with PyTorch (default) or onnxruntime over an ONNX export "
                            "(no torch imported)")


def cmd_export(args: argparse.Namespace) -> None:
    from tuwen.apps.export import export_onnx

    print(export_onnx(args.model, args.out).summary())


def cmd_reproduce(args: argparse.Namespace) -> None:
    from tuwen.apps.reproduce import reproduce

    result = reproduce(args.model, args.out, data_root=args.data)
    print(result.table())
    print(f"reproduced run in {result.out}")


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    rep = sub.add_parser("reproduce", help="retrain a model from its card (README.md), "
                                           "evaluate, and print each metric then and now")
    rep.add_argument("model", help="saved model folder with its README.md (RUN/model)")
    rep.add_argument("--out", required=True, help="new run directory")
    rep.add_argument("--data", help="the data folder (default: the one on the card); its "
                                    "fingerprint must match the card's")
    rep.set_defaults(func=cmd_reproduce)


def _add_export(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="the image and text embedding paths and the ITM scorer "
                                       "as ONNX, for torch-free serving")
    ex.add_argument("model", help="saved model folder (RUN/model)")
    ex.add_argument("--format", choices=["onnx"], default="onnx")
    ex.add_argument("--out", required=True, help="export folder (created)")
    ex.set_defaults(func=cmd_export)


SERVE_LIMITS = {"max_batch": int, "max_wait_ms": float, "max_queue": int, "timeout_s": float,
                "max_upload_bytes": int, "max_image_pixels": int, "max_text_chars": int,
                "max_history_turns": int}


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn
    from pydantic import ValidationError

    from tuwen.apps.access import API_KEY_ENV, Access, check_binding
    from tuwen.apps.limits import ServeSettings
    from tuwen.apps.search import ImageIndex
    from tuwen.apps.server import create_app

    try:
        settings = ServeSettings(**{k: getattr(args, k) for k in SERVE_LIMITS
                                    if getattr(args, k) is not None})
    except ValidationError as err:
        first = err.errors()[0]
        raise TuwenError(f"--{first['loc'][0].replace('_', '-')}: {first['msg']}") from None
    access = Access(args.api_key or os.environ.get(API_KEY_ENV) or None,
                    tuple(args.cors_origin))
    check_binding(args.host, access, args.insecure)  # before the model loads: fail fast
    index = ImageIndex(args.index) if args.index else None
    app = create_app(_pipeline(args), index, settings, access)
    keyed = "; every /v1/* call needs the API key" if access.api_key else ""
    print(f"serving {args.model} on http://{args.host}:{args.port}/ (API docs at /docs{keyed})")
    # requests past the queues and their batches are refused with a JSON 503 and Retry-After
    # by the app (limits.InFlightLimit), not by uvicorn's plain-text one
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="web page and JSON API over a saved model")
    serve.add_argument("model", help="saved model folder (RUN/model)")
    serve.add_argument("--index", help="image index folder (tuwen index --out) for search")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help="every /v1/* call needs 'Authorization: Bearer KEY' "
                       "(default: $TUWEN_API_KEY; the environment keeps it out of `ps`)")
    serve.add_argument("--insecure", action="store_true",
                       help="allow --host beyond loopback without an API key")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="let pages from ORIGIN (https://host[:port]) call the API; "
                            "repeatable (default: none, same-origin only)")
    for name, kind in SERVE_LIMITS.items():
        serve.add_argument(f"--{name.replace('_', '-')}", type=kind,
                           help="see docs/inference.md (default: a safe value)")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--device", help="cpu, cuda ... (default: a GPU if there is one)")
    serve.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default fp32")
    serve.set_defaults(func=cmd_serve)


def cmd_attention(args: argparse.Namespace) -> None:
    from tuwen.evaluation import attention
    from tuwen.evaluation.plots import attention_grid
    from tuwen.tasks import saved_model

    loaded = saved_model.load(args.model)
    result = attention.attention_maps(
        loaded, attention.image_pixels(loaded, args.image), text=args.text,
        question=args.question, source=args.source or ("fusion" if args.question else "decoder"),
        layer=attention.parse_pick(args.layer, "layer"),
        head=attention.parse_pick(args.head, "head"), rollout=args.rollout)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(attention_grid(attention.display_image(args.image), result))
    answer = f" -> {result.answer}" if result.answer is not None else ""
    print(f"{result.text}{answer}\nwrote {len(result.tokens)} {result.source} attention maps "
          f"({result.grid[0]}x{result.grid[1]} patches) to {out}")


def _add_attention(sub) -> None:
    att = sub.add_parser("attention", help="per-token attention heatmaps over an image")
    att.add_argument("model", help="saved model folder (RUN/model)")
    att.add_argument("image")
    text = att.add_mutually_exclusive_group()
    text.add_argument("--text", help="caption to draw maps for (default: generate one)")
    text.add_argument("--question", help="question: maps through the fusion, with the answer")
    att.add_argument("--out", required=True, help="PNG file to write")
    att.add_argument("--source", choices=["decoder", "fusion"],
                     help="decoder cross-attention (default) or fusion attention")
    att.add_argument("--layer", default="mean", help="layer index or 'mean' (default)")
    att.add_argument("--head", default="mean", help="head index or 'mean' (default)")
    att.add_argument("--rollout", action="store_true",
                     help="carry the maps back to input patches by ViT attention rollout")
    att.set_defaults(func=cmd_attention)


def cmd_score(args: argparse.Namespace) -> None:
    from tuwen.evaluation import score

    if args.score_command == "captions":
        metrics = score.score_captions(args.predictions, args.references, split=args.split,
                                       subset=args.subset)
    elif args.score_command == "vqa":
        metrics = score.score_vqa(args.predictions, args.questions, args.annotations)
    else:
        metrics = score.score_retrieval(args.similarities, args.ground_truth)
    if args.out is None:
        print(json.dumps(metrics, indent=2))
        return
    print(score.score_summary(metrics))
    print(f"\nwrote {score.write_metrics(metrics, args.out)}")


def _add_score(sub: argparse._SubParsersAction) -> None:
    kinds = sub.add_parser("score", help="metrics on result files from any model").add_subparsers(
        dest="score_command", required=True)
    cap = kinds.add_parser("captions", help='COCO caption results [{"image_id", "caption"}]')
    cap.add_argument("--predictions", required=True, metavar="RES.json")
    cap.add_argument("--references", required=True, metavar="REFS.json",
                     help="COCO captions JSON or Karpathy split JSON")
    cap.add_argument("--split", help="Karpathy split to score (default test); a label for COCO")
    cap.add_argument("--subset", action="store_true",
                     help="score only the reference images that have a prediction (COCOEvalCap)")
    vqa = kinds.add_parser("vqa", help='VQAv2 results [{"question_id", "answer"}]')
    vqa.add_argument("--predictions", required=True, metavar="RES.json")
    vqa.add_argument("--questions", required=True, metavar="Q.json")
    vqa.add_argument("--annotations", required=True, metavar="A.json")
    ret = kinds.add_parser("retrieval", help="similarity matrix (n_images, n_texts)")
    ret.add_argument("--similarities", required=True, metavar="S.npy")
    ret.add_argument("--ground-truth", required=True, metavar="G.json",
                     help='{"text_image": [image row of each text column]}')
    for p in (cap, vqa, ret):
        p.add_argument("--out", metavar="METRICS.json", help="write here (default: print JSON)")
        p.set_defaults(func=cmd_score)


def cmd_ablate(args: argparse.Namespace) -> None:
    from tuwen.apps.ablate import ablate
    from tuwen.apps.ablate_report import write_report
    from tuwen.apps.space import BaseConfig

    runs = ablate(BaseConfig(args.config, args.set), args.axis, args.seeds, args.out, args.split,
                  args.parallel, args.variant)
    budget = runs[0].variant.config.train
    dropped = sorted({f"{k} ({r.variant.label})" for r in runs for k in r.variant.dropped})
    command = " ".join(["tuwen ablate", args.config, *(f"--variant {v}" for v in args.variant),
                        *(f"--axis {a}" for a in args.axis),
                        f"--seeds {args.seeds}", f"--out {args.out}",
                        *(f"--set {s}" for s in args.set)])
    header = ["# Ablation", "", "```", command, "```", "",
              f"Split `{args.split}`; {args.seeds} seeds per variant (train.seed 0.."
              f"{args.seeds - 1}); budget per run: train.max_steps={budget.max_steps}, "
              f"train.max_minutes={budget.max_minutes}; steps run: "
              f"{sorted({r.outcome.steps for r in runs})}."]
    if dropped:
        header.append(f"Keys dropped by a type switch: {', '.join(dropped)}.")
    print("\n" + write_report(runs, Path(args.out), header, args.resamples))
    print(f"wrote {Path(args.out)}/ablation.md, ablation.csv, bootstrap.csv, ablation.png "
          f"(runs in {Path(args.out) / 'runs'})")


def cmd_sweep(args: argparse.Namespace) -> None:
    from tuwen.apps.sweep import Storage, SweepSpec, sweep
    from tuwen.apps.sweep_report import write_outputs

    spec = SweepSpec(config=args.config, overrides=args.set, metric=args.metric,
                     direction=args.direction, split=args.split, grid=args.grid,
                     params=args.param, trials=args.trials, prune=not args.no_prune,
                     seed=args.seed)
    storage = Storage(args.storage) if args.heartbeat is None else \
        Storage(args.storage, args.heartbeat)
    study = sweep(spec, args.out, workers=args.workers, storage=storage)
    print("\n" + write_outputs(study, Path(args.out), args.metric, args.direction))
    print(f"wrote {args.out}/results.csv, best.yaml, plot_params.png, plot_history.png, "
          f"plot_importance.png (study in {storage.shown()})")


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    sw = sub.add_parser("sweep", help="hyperparameter search (Optuna): a grid or TPE, "
                                      "median pruning, resumable")
    sw.add_argument("config")
    sw.add_argument("--out", required=True, metavar="SWEEP_DIR",
                    help="folder for the study (study.db), the trials and the results")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY.PATH=V1,V2",
                    help="grid values of one key (several --grid: every combination)")
    sw.add_argument("--param", action="append", default=[], metavar="KEY.PATH=SPEC",
                    help="searched key: log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH or "
                         "choice:A,B,C")
    sw.add_argument("--trials", type=int, help="number of trials of a --param search")
    sw.add_argument("--metric", required=True,
                    help="metrics.json key to optimise, e.g. retrieval.t2i_r1")
    sw.add_argument("--direction", choices=["maximize", "minimize"], default="maximize")
    sw.add_argument("--split", help="split the metric is read on (default: data.val_split)")
    sw.add_argument("--workers", "--parallel", dest="workers", type=int, default=1,
                    help="trials at once on this machine, in processes")
    sw.add_argument("--storage", metavar="URL",
                    help="Optuna storage URL of the study, shared by every tuwen sweep that "
                         "names it (e.g. postgresql://user:pass@host/db); default: "
                         "SWEEP_DIR/study.db (SQLite)")
    sw.add_argument("--heartbeat", type=int, metavar="SECONDS",
                    help="seconds between a running trial's heartbeats (default 10); after 3 "
                         "missed ones its worker counts as dead and the trial runs again")
    sw.add_argument("--no-prune", action="store_true",
                    help="no median pruning (by default weak trials stop early when "
                         "train.eval_every reports the metric during training)")
    sw.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    sw.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override of the base config for every trial")
    sw.set_defaults(func=cmd_sweep)


def _add_ablate(sub: argparse._SubParsersAction) -> None:
    ab = sub.add_parser("ablate", help="vary config keys, several seeds each, same budget; "
                                       "mean +- std and paired-bootstrap intervals")
    ab.add_argument("config")
    ab.add_argument("--axis", action="append", default=[], metavar="KEY.PATH=V1,V2",
                    help="values of one config key (several --axis make a grid)")
    ab.add_argument("--variant", action="append", default=[], metavar="NAME=FILE.yaml",
                    help="a named overlay of the config (a partial YAML config); several "
                         "--variant are compared with each other (and crossed with --axis)")
    ab.add_argument("--seeds", type=int, default=3, help="seeds per value (default 3)")
    ab.add_argument("--out", required=True, help="folder for the runs and the report")
    ab.add_argument("--split", default="test", help="split to evaluate (default test)")
    ab.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    ab.add_argument("--parallel", type=int, default=1, help="runs at once, in processes")
    ab.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override of the base config for every run (e.g. train.max_steps)")
    ab.set_defaults(func=cmd_ablate)


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
    classes = data.add_parser("shapes-classes", help="the one-object shapes images of a split "
                                                     "as an image folder (zero-shot "
                                                     "classification)")
    classes.add_argument("shapes_dir")
    classes.add_argument("out")
    classes.add_argument("--split", default="test_novel")
    classes.set_defaults(func=cmd_data_shapes_classes)
    check = data.add_parser("check", help="the dataset doctor: counts, missing and broken "
                                          "images, text lengths, split leakage")
    check.add_argument("config")
    check.add_argument("--out", help="folder (or .json file) for check.json "
                                     "(default: the config's data.root)")
    check.add_argument("--splits", help="comma-separated splits (default: the train, val and "
                                        "eval splits of the config)")
    check.add_argument("--min-side", type=int, help="images with a shorter side are 'tiny' "
                                                    "(default: data.image_size / 4, at least 8)")
    check.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    check.set_defaults(func=cmd_data_check)

    train = sub.add_parser("train", help="joint training from a YAML config")
    train.add_argument("config")
    train.add_argument("--out", help="run directory (required unless --dry-run)")
    train.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    train.add_argument("--dry-run", action="store_true",
                       help="validate the config and run a tiny stand-in of its model offline")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a run on a split")
    ev.add_argument("run")
    ev.add_argument("--split", default="test")
    ev.add_argument("--tasks", help="comma-separated evaluators (caption, retrieval, vqa, "
                                    "classify, chat, ...; default: all the split has labels for)")
    ev.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    ev.set_defaults(func=cmd_eval)

    demo = sub.add_parser("demo", help="data + training + evaluation in one go")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--config", help="YAML config (default: the demo config shipped with "
                      "tuwen, the same as configs/shapes.yaml)")
    demo.add_argument("--data", help="shapes data folder (default: data.root of the config)")
    demo.add_argument("--minutes", type=float, default=DEMO_MINUTES,
                      help=f"wall-clock training budget (default {DEMO_MINUTES}: the whole demo "
                           "then fits in 10 minutes on 2 cores)")
    demo.add_argument("--seed", type=int, default=0, help="data generator seed")
    demo.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    _add_counts(demo)
    demo.set_defaults(func=cmd_demo)

    _add_inference(sub)
    _add_search(sub)
    _add_export(sub)
    _add_reproduce(sub)
    _add_serve(sub)
    _add_score(sub)
    _add_attention(sub)
    _add_ablate(sub)
    _add_sweep(sub)
    return parser


def _one_line_notes(show):
    """``warnings.showwarning`` that prints tuwen's own warnings as ``tuwen: note: ...``."""
    def show_warning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, TuwenWarning):
            print(f"tuwen: note: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)
    return show_warning


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():  # restores showwarning when main returns
            warnings.showwarning = _one_line_notes(warnings.showwarning)
            code = args.func(args)
    except TuwenError as err:
        print(f"tuwen: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tuwen: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
