"""The `mosaserve` command: ties the subcommands together; the logic lives in the subpackages."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path

from .adapters.train_config import DEFAULT_EPOCHS, TRAIN_DEFAULTS, TrainConfig


def _numbers(text: str, kind=float) -> tuple:
    """A comma-separated option, e.g. "1000,100"."""
    return tuple(kind(v) for v in text.split(","))


def _head_problem(head: str | None) -> str | None:
    from .adapters.config import HEADS

    return None if head is None or head in HEADS else f"unknown head {head}: choose from {', '.join(HEADS)}"


def _train_arguments_problem(args: argparse.Namespace) -> str | None:
    """What makes a training command fail, found before minutes of training rather than after."""
    from .adapters.config import METHODS
    from .deploy.config import ADMIN_TOKEN_ENV
    from .runtime.errors import InvalidTaskIdError
    from .runtime.task_ids import validate_task_id

    methods = args.methods.split(",")
    if unknown := [m for m in methods if m not in METHODS]:
        return f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(METHODS)}"
    if problem := _head_problem(args.head):
        return problem
    if args.task_id:
        if len(methods) != 1:
            return "--task-id names one task: train one method with it"
        try:
            validate_task_id(args.task_id)
        except InvalidTaskIdError as exc:
            return f"--task-id: {exc}"
    if args.register and not (args.token or os.environ.get(ADMIN_TOKEN_ENV)):
        return f"--register needs --token or {ADMIN_TOKEN_ENV}"
    return None


def _train(args: argparse.Namespace) -> int:
    from .deploy.process import background_torch_threads, yield_to_serving

    if problem := _train_arguments_problem(args):
        print(problem, file=sys.stderr)
        return 2
    if not args.full_priority:  # before torch loads: its import alone takes seconds of CPU a service beside needs
        yield_to_serving()  # the threads started later follow
    import torch

    from .adapters.demo import format_rows, run_demo
    from .adapters.errors import AdapterConfigError

    if not args.full_priority:
        torch.set_num_threads(background_torch_threads())
    try:
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          max_rotation=args.max_rotation, max_scale=args.max_scale)
    except AdapterConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    rows = run_demo(Path(args.out), tuple(args.methods.split(",")), args.dataset, args.train_size,
                    args.test_size, cfg, progress=not args.no_progress, head=args.head)
    print(format_rows(rows))
    if args.register:
        return _register_all(args, rows)
    return 0


def _register_all(args: argparse.Namespace, rows) -> int:
    from .client import Client, ServiceError
    from .deploy.config import ADMIN_TOKEN_ENV

    service = Client(args.register, token=args.token or os.environ.get(ADMIN_TOKEN_ENV))
    for row in rows:
        task_id = args.task_id or row.file.stem
        try:
            answer = service.register(task_id, row.file)
        except ServiceError as exc:
            print(f"registration of {task_id} failed: {exc}", file=sys.stderr)
            return 1
        print(f"registered {task_id} v{answer['task']['version']} "
              f"({'servable on every replica' if answer['servable_everywhere'] else 'still spreading'})")
    return 0


def _register(args: argparse.Namespace) -> int:
    from .client import Client, ServiceError
    from .deploy.config import ADMIN_TOKEN_ENV

    files = sorted(Path(args.folder).glob("*.safetensors"))
    if not files:
        print(f"no *.safetensors files in {args.folder}", file=sys.stderr)
        return 2
    service, limit, done = Client(args.url, token=args.token or os.environ.get(ADMIN_TOKEN_ENV)), args.batch_mb << 20, 0
    for batch in _batches(files, limit):
        try:
            answer = service.register_many({f.stem: f for f in batch})
        except ServiceError as exc:
            print(f"registration of {batch[0].stem} .. {batch[-1].stem} failed: {exc} "
                  f"({done} of {len(files)} registered before)", file=sys.stderr)
            return 1
        done += len(batch)
        changed = sum(t["changed"] for t in answer["tasks"])
        print(f"{done}/{len(files)}: {changed} of {len(batch)} changed "
              f"({'servable on every replica' if answer['servable_everywhere'] else 'still spreading'})")
    return 0


def _batches(files: list[Path], limit: int) -> list[list[Path]]:
    """Files in order, grouped so that each group's bytes stay under `limit` (a larger file goes alone)."""
    batches, size = [[]], 0
    for file in files:
        bytes_ = file.stat().st_size
        if batches[-1] and size + bytes_ > limit:
            batches.append([])
            size = 0
        batches[-1].append(file)
        size += bytes_
    return batches


def _inspect(args: argparse.Namespace) -> int:
    from .adapters.errors import AdapterFileError
    from .adapters.file_format import load_adapter

    try:
        adapter = load_adapter(args.file)
    except AdapterFileError as exc:
        print(f"invalid adapter file: {exc}", file=sys.stderr)
        return 2
    header = adapter.header
    summary = header.to_dict(content_sha256="(verified)")
    summary["parameters"] = sum(t.numel() for t in adapter.tensors.values())
    print(json.dumps(summary, indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .loadtests.runtime_bench import format_table, run_benchmark

    try:
        rows = run_benchmark(args.models.split(","), args.batch, args.repeats, args.r, args.tasks, Path(args.out),
                             args.device, args.dtype)
    except ValueError as exc:  # a device torch does not know or cannot see, a dtype it does not serve in
        print(f"mosaserve bench: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    print(f"\nwritten: {args.out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import secrets
    from dataclasses import replace

    from .deploy.config import ServeConfig, ServeConfigError, ServeFile, read_serve_file
    from .deploy.launch import run_service

    try:
        file = read_serve_file(args.config) if args.config else ServeFile(ServeConfig())
        settings = file.settings if args.admin_port is None else file.settings.with_settings(admin_port=args.admin_port)
    except ServeConfigError as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
        return 2
    sample = None
    if args.demo:
        from .deploy.demo import prepare_demo, write_samples

        demo = prepare_demo(Path(args.demo_dir), args.demo_epochs, progress=not args.no_progress)
        settings = settings.with_settings(backbone=demo.runtime.backbone, store_dir=demo.runtime.store_dir)
        sample = write_samples(Path(args.demo_dir) / "samples")[0]
    token = args.admin_token or settings.resolved_admin_token()
    if token is None:
        token = secrets.token_urlsafe(24)
        print(f"no admin token configured; generated one for this run: {token}")
    settings = settings.with_settings(admin_token=token)
    file = replace(file, settings=settings, host=args.host or file.host, port=args.port or file.port)
    run_service(file, args.address, sample)
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from .adapters.animal_mnist import load_animal_mnist
    from .adapters.embedded import EMBEDDED_ARCHITECTURE, EMBEDDED_CHECKPOINT
    from .adapters.pretraining import PretrainConfig, pretrain, save_embedded

    cfg = PretrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, device=args.device,
                         glyph_classes=args.glyph_classes, glyphs_per_batch=args.glyphs_per_batch,
                         shaded_classes=args.shaded_classes, shaded_per_batch=args.shaded_per_batch)
    report = lambda row: print("  ".join(f"{key} {value:.4g}" for key, value in row.items()), flush=True)  # noqa: E731
    backbone, result = pretrain(EMBEDDED_ARCHITECTURE, load_animal_mnist(), cfg, on_epoch=report)
    path = save_embedded(backbone, Path(args.out or EMBEDDED_CHECKPOINT), EMBEDDED_ARCHITECTURE, cfg, result)
    print(f"written: {path} (val accuracy {result.val_accuracy:.2%}, {result.seconds:.0f} s)")
    return 0


def _embedded_layout(checkpoint: str | None):
    """The embedded backbone, or other weights of its layout (`--backbone FILE`)."""
    from dataclasses import replace

    from .adapters.embedded import EMBEDDED_BACKBONE

    return EMBEDDED_BACKBONE if checkpoint is None else replace(EMBEDDED_BACKBONE, checkpoint=checkpoint)


def _results(args: argparse.Namespace) -> int:
    from .adapters.quality import run_quality
    from .adapters.quality_tables import format_against_pixels, format_curves, format_quality, format_search
    from .adapters.search import FULL_GRID, QUICK_GRID

    if problem := _head_problem(args.head):
        print(problem, file=sys.stderr)
        return 2
    spec = _embedded_layout(args.backbone)
    grid = None if args.no_search else QUICK_GRID if args.quick else FULL_GRID
    report = run_quality(tuple(args.tasks.split(",")), _numbers(args.budgets, int), tuple(args.methods.split(",")),
                         _numbers(args.seeds, int), args.epochs, args.test_size, Path(args.out), spec, grid=grid,
                         head=args.head, splits=_numbers(args.splits, int))
    rows = report["rows"]
    tables = (format_search(report["search"]), format_quality(rows), format_against_pixels(rows), format_curves(rows))
    for table in tables:
        print(f"\n{table}")
    print(f"\nwritten: {args.out}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from .adapters.depth_probe import format_probe, run_probe

    if args.repeats < 1:
        print("probe: --repeats must be at least 1", file=sys.stderr)
        return 2
    spec = _embedded_layout(args.backbone)
    out = Path(args.out or f"out/results/probe-{args.task.replace(':', '-').replace('/', '-')}.json")
    on_row = lambda row: print(f"{row.features}: {row.mean:.2%} ± {row.sd:.2%}", flush=True)  # noqa: E731
    try:
        report = run_probe(args.task, args.train_size, spec, args.repeats, args.depths, args.split, args.test_size,
                           out, on_row)
    except (ValueError, KeyError, OSError) as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 2
    print(f"\n{format_probe(report)}\n\nwritten: {out}")
    return 0


def _loadtest_run(args: argparse.Namespace) -> int:
    from .loadtests.command import run_command

    try:
        return run_command(args)
    except (ValueError, OSError) as exc:  # a bad option, a missing file, or no service at --url
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2


def _loadtest_compare(args: argparse.Namespace) -> int:
    from .adapters.backbone import BackboneSpec
    from .loadtests.side_by_side import CompareSpec, run_compare

    try:
        spec = CompareSpec(backbone=BackboneSpec(args.backbone), device=args.device, dtype=args.dtype,
                           task_counts=_numbers(args.tasks, int), mixes=tuple(args.mixes.split(",")),
                           rates=_numbers(args.rates), duration_s=args.duration, slo_ms=args.slo_ms,
                           max_models=_numbers(args.max_models, int), registrations=args.registrations,
                           registration_rounds=args.registration_rounds, image_size=args.image_size,
                           port=args.port)
    except ValueError as exc:
        print(f"loadtest compare: {exc}", file=sys.stderr)
        return 2
    doc = run_compare(spec, Path(args.out))
    print(doc["summary"])
    print(f"\nwritten: {Path(args.out) / 'compare.json'} (and a report with plots per run beside it)")
    return 0


def _loadtest_scale(args: argparse.Namespace) -> int:
    from .loadtests.scale import ScaleSpec, format_scale, run_scale

    spec = ScaleSpec(tasks=args.tasks, resident=args.resident, files_per_upload=args.files_per_upload,
                     duration_s=args.duration, concurrency=args.concurrency, port=args.port, dtype=args.dtype)
    print(format_scale(run_scale(spec, Path(args.out))))
    print(f"\nwritten: {Path(args.out) / 'scale.json'} and scale.md")
    return 0


def _loadtest_cluster(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))  # before ray is imported: it reads them once
    os.environ["RAY_AUTH_MODE"] = "token"
    from .loadtests.cluster import ClusterSpec, format_cluster, run_cluster

    spec = ClusterSpec(store=args.store, gcs_port=args.gcs_port, head_http_port=args.port,
                       worker_http_port=args.worker_port)
    doc = run_cluster(spec, Path(args.out))
    print(format_cluster(doc))
    print(f"\nwritten: {Path(args.out) / 'cluster.json'} and cluster.md")
    return 0 if doc["ok"] else 1


def _add_loadtest(sub) -> None:
    from .loadtests.command import add_run_arguments

    loadtest = sub.add_parser("loadtest", help="open-loop load tests over HTTP (JSON, table, latency plot)")
    kinds = loadtest.add_subparsers(dest="kind", required=True)
    run = kinds.add_parser("run", help="one scenario against a running service")
    add_run_arguments(run)
    run.set_defaults(func=_loadtest_run)
    compare = kinds.add_parser("compare", help="bare backbone vs mosaserve vs per-task models, in one local run")
    compare.add_argument("--backbone", default="vit_tiny_patch16_224", help="timm ViT (random weights)")
    compare.add_argument("--device", default="cpu", help="where every system computes: cpu, cuda, cuda:1")
    compare.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                         help="every system's precision (bfloat16 on a GPU, or a CPU with avx512_bf16 or AMX)")
    compare.add_argument("--tasks", default="10,100", help="task counts")
    compare.add_argument("--mixes", default="uniform,zipf")
    compare.add_argument("--rates", default="4,6,8,10,12,14,16,20,24", help="swept request rates")
    compare.add_argument("--duration", type=float, default=8.0, help="measured seconds per rate")
    compare.add_argument("--slo-ms", type=float, default=500.0)
    compare.add_argument("--max-models", default="-1,8,3",
                         help="baseline runs: per-task models per replica; -1: all (3 is Serve's default)")
    compare.add_argument("--registrations", type=int, default=100, help="uploads per registration burst")
    compare.add_argument("--registration-rounds", type=int, default=3, help="steady / registration-burst pairs")
    compare.add_argument("--image-size", type=int, default=224)
    compare.add_argument("--port", type=int, default=8123)
    compare.add_argument("--out", default="out/loadtest/compare")
    compare.set_defaults(func=_loadtest_compare)
    scale = kinds.add_parser("scale", help="one replica serving --tasks tasks: registration, memory, listing, "
                             "/metrics, restart, and a Zipf load with a small device residency")
    scale.add_argument("--tasks", type=int, default=10_000)
    scale.add_argument("--resident", type=int, default=256, help="adapters on the device in the second Zipf load")
    scale.add_argument("--files-per-upload", type=int, default=500)
    scale.add_argument("--duration", type=float, default=20.0, help="measured seconds of each Zipf load")
    scale.add_argument("--concurrency", type=int, default=16)
    scale.add_argument("--port", type=int, default=8124)
    scale.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                       help="the replica's serving precision, which it holds its adapters in too")
    scale.add_argument("--out", default="out/loadtest/scale")
    scale.set_defaults(func=_loadtest_scale)
    cluster = kinds.add_parser("cluster", help="two Ray nodes on this machine (two `ray start`), a replica on each, "
                               "the store in S3: registration through either node, a node killed and restarted")
    cluster.add_argument("--store", help="s3://bucket/prefix (AWS environment); default: a bucket on a local S3 "
                         "server (needs moto[server])")
    cluster.add_argument("--gcs-port", type=int, default=6390)
    cluster.add_argument("--port", type=int, default=8131, help="the head node's HTTP port")
    cluster.add_argument("--worker-port", type=int, default=8132, help="the worker node's HTTP port")
    cluster.add_argument("--out", default="out/loadtest/cluster")
    cluster.set_defaults(func=_loadtest_cluster)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mosaserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train adapters on a dataset, write adapter files, optionally register them")
    train.add_argument("--dataset", default="mnist",
                       help="mnist, digits, folder:PATH (a folder per class) or list:PATH ('path label' lines)")
    train.add_argument("--register", metavar="URL", help="PUT each adapter to a running service, e.g. http://127.0.0.1:8000")
    train.add_argument("--token", help="admin token for --register (default: the MOSASERVE_ADMIN_TOKEN variable)")
    train.add_argument("--task-id", help="task id to register (default: the file name, e.g. mnist-mosa)")
    train.add_argument("--methods", default="adapter,mosa", help="comma-separated: mosa,adapter,lora,linear")
    train.add_argument("--epochs", type=int, help=f"default: {DEFAULT_EPOCHS}, or more for a small dataset to take "
                       f"{TRAIN_DEFAULTS.min_steps} steps")
    train.add_argument("--head", help="what the head reads: the final tokens (tokens, the "
                       "default) or the final and the middle block's tokens (tokens_mid)")
    train.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS.batch_size)
    train.add_argument("--max-rotation", type=float, default=TRAIN_DEFAULTS.max_rotation,
                       help="rotate each training image by up to this many degrees (0: no rotation)")
    train.add_argument("--max-scale", type=float, default=TRAIN_DEFAULTS.max_scale,
                       help="zoom each training image by 1 +- this (0: no zoom)")
    train.add_argument("--lr", type=float, default=TRAIN_DEFAULTS.lr)
    train.add_argument("--seed", type=int, default=TRAIN_DEFAULTS.seed)
    train.add_argument("--train-size", type=int, default=1000)
    train.add_argument("--test-size", type=int, default=1000)
    train.add_argument("--out", default="out/demo", help="folder for the backbone and adapter files")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--full-priority", action="store_true",
                       help="train at normal OS priority on every core (default: only on CPU time a service on "
                            "this machine leaves idle, with half the cores' torch threads)")
    train.set_defaults(func=_train)
    bench = sub.add_parser("bench", help="benchmarks; writes JSON and prints a table")
    bench.add_argument("target", choices=["runtime"])
    bench.add_argument("--models", default="vit_tiny_patch16_224,vit_small_patch16_224")
    bench.add_argument("--batch", type=int, default=32)
    bench.add_argument("--tasks", type=int, default=32, help="registered tasks (all-distinct rows use all)")
    bench.add_argument("--r", type=int, default=16)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    bench.add_argument("--dtype", default="float32", help="float32, bfloat16 (the GPU serving precision) or float16")
    bench.add_argument("--out", default="out/bench/runtime.json")
    bench.set_defaults(func=_bench)
    serve = sub.add_parser("serve", help="run the Ray Serve application (HTTP API) until Ctrl-C")
    serve.add_argument("--config", help="a Ray Serve config file, e.g. deploy/serve_config.yaml")
    serve.add_argument("--host", help="bind address (default from the config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default from the config: 8000)")
    serve.add_argument("--address", help="an existing Ray cluster (e.g. auto); default: start a local one")
    serve.add_argument("--admin-token", help="token for PUT/DELETE (default: MOSASERVE_ADMIN_TOKEN, else generated)")
    serve.add_argument("--admin-port", type=int, help="the task board's own port for PUT/DELETE, which keeps uploads "
                                                      "off the serving processes (default from the config: off)")
    serve.add_argument("--demo", action="store_true", help="serve the demo backbone with demo tasks (trained once)")
    serve.add_argument("--demo-dir", default="out/demo")
    serve.add_argument("--demo-epochs", type=int, default=5)
    serve.add_argument("--no-progress", action="store_true")
    serve.set_defaults(func=_serve)
    pre = sub.add_parser("pretrain-backbone", help="rebuild the embedded default backbone (needs animal-mnist)")
    pre.add_argument("--epochs", type=int, default=15)
    pre.add_argument("--batch-size", type=int, default=64, help="Animal-MNIST images per step")
    pre.add_argument("--glyph-classes", type=int, default=1000, help="procedural stroke-glyph classes trained beside "
                     "(0: silhouettes only)")
    pre.add_argument("--glyphs-per-batch", type=int, default=64, help="glyph images added to each step's batch")
    pre.add_argument("--shaded-classes", type=int, default=0, help="procedural shaded-blob classes trained beside "
                     "(grey images with texture; 0: none)")
    pre.add_argument("--shaded-per-batch", type=int, default=32, help="shaded-blob images added to each step's batch")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--device", default="cpu", help="cpu, or cuda for a larger run where a GPU is lent")
    pre.add_argument("--out", help="default: the package's adapters/weights/default_backbone.safetensors")
    pre.set_defaults(func=_pretrain)
    results = sub.add_parser("results", help="the quality table (RESULTS.md): methods x tasks x budgets x seeds")
    results.add_argument("--tasks", default="mnist,digits,faces")
    results.add_argument("--budgets", default="1000,100", help="training images per task")
    results.add_argument("--methods", default="linear,adapter,lora,mosa")
    results.add_argument("--seeds", default="0,1,2")
    results.add_argument("--epochs", type=int, help=f"default: the training default ({DEFAULT_EPOCHS}, or "
                         f"{TRAIN_DEFAULTS.min_steps} steps at least); "
                         "the search tries multiples of it")
    search = results.add_mutually_exclusive_group()
    search.add_argument("--quick", action="store_true", help="a smoke run's search: two learning rates, the default "
                        "schedule only")
    search.add_argument("--no-search", action="store_true", help="train every method with the training defaults")
    results.add_argument("--test-size", type=int, default=500)
    results.add_argument("--splits", default="0", help="seeds of the train/test splits; several average a small "
                         "task over test sets (faces tests on 100 crops, where one split decides by a few images)")
    results.add_argument("--head", help="what every method's head reads: tokens (the default) or tokens_mid")
    results.add_argument("--out", default="out/results/quality.json")
    results.add_argument("--backbone", help="weights of the embedded layout to measure instead, e.g. a "
                                            "pretrain-backbone --out file (default: the embedded backbone)")
    results.set_defaults(func=_results)
    probe = sub.add_parser("probe", help="what the frozen tokens of each depth carry for a task, against its pixels "
                           "(repeated cross-validation inside the training images)")
    probe.add_argument("--task", default="faces", help="a built-in task, folder:PATH or list:PATH")
    probe.add_argument("--train-size", type=int, default=100, help="the first images of the split, as in results")
    probe.add_argument("--repeats", type=int, default=10, help="fresh draws of the 5 folds")
    probe.add_argument("--depths", help="depth sets to read, e.g. 2,6,2+6 (0: the patch embedding; default: each "
                       "depth alone)")
    probe.add_argument("--split", type=int, default=0)
    probe.add_argument("--test-size", type=int, default=500, help="held out as in results, never read here")
    probe.add_argument("--backbone", help="weights of the embedded layout to probe instead")
    probe.add_argument("--out", help="default: out/results/probe-<task>.json")
    probe.set_defaults(func=_probe)
    _add_loadtest(sub)
    register = sub.add_parser("register", help="register every <task_id>.safetensors file of a folder on a live "
                              "service, many per request")
    register.add_argument("folder")
    register.add_argument("--url", default="http://127.0.0.1:8000", help="the main port, or the board's admin port")
    register.add_argument("--token", help="admin token (default: MOSASERVE_ADMIN_TOKEN)")
    register.add_argument("--batch-mb", type=int, default=64, help="adapter bytes per request (at most the "
                          "service's max_bulk_upload_bytes)")
    register.set_defaults(func=_register)
    inspect = sub.add_parser("inspect", help="validate an adapter file and print its header")
    inspect.add_argument("file")
    inspect.set_defaults(func=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
