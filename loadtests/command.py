"""`mosaserve loadtest run`: one scenario against a running service, over HTTP only."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .inputs import adapter_files, noise_png, registered_tasks
from .mixes import make_mix
from .runner import Target
from .scenarios import SCENARIOS, LoadSpec, format_scenario, run_scenario
from .training_job import TRAINERS, TrainingJobSpec


def run_command(args: argparse.Namespace) -> int:
    tasks = args.tasks.split(",") if args.tasks else []
    if not tasks and args.mix != "backbone":
        tasks = registered_tasks(args.url)
    mix = make_mix(args.mix, tasks, args.zipf_s)
    spec = LoadSpec(rate=args.rate, duration_s=args.duration, slo_s=args.slo_ms / 1000, warmup_s=args.warmup,
                    seed=args.seed, burst_factor=args.burst_factor, burst_s=args.burst_seconds,
                    sweep_rates=tuple(float(r) for r in args.rates.split(",")) if args.rates else (),
                    registrations=args.registrations, rounds=args.rounds, registration_every_s=args.registration_every,
                    training=TrainingJobSpec(args.trainer, epochs=args.train_epochs, train_size=args.train_size),
                    train_s=args.train_seconds, concurrency=args.concurrency, allow_remote=args.allow_remote)
    image = Path(args.image).read_bytes() if args.image else noise_png(args.image_size)
    files = adapter_files(Path(args.adapters)) if args.adapters else []
    target = Target(args.url, "image/jpeg" if args.image and args.image.lower().endswith((".jpg", ".jpeg"))
                    else "image/png", send_model_id=args.model_id_header, admin_url=args.admin_url,
                    deadline_ms=args.deadline_ms)
    token = args.token or os.environ.get("MOSASERVE_ADMIN_TOKEN")
    doc = run_scenario(args.scenario, target, spec, mix, image, Path(args.out), files, token)
    print(format_scenario(doc))
    print(f"\nwritten: {Path(args.out) / 'report.json'} and the latency plot(s) beside it")
    return 0


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service (loopback unless --allow-remote)")
    parser.add_argument("--scenario", default="steady", choices=SCENARIOS,
                        help="overload and train-while-serving take the capacity from a sweep over --rates, or "
                             "--rate as the capacity when no rates are given")
    parser.add_argument("--mix", default="uniform", choices=["uniform", "zipf", "single", "backbone"])
    parser.add_argument("--tasks", help="comma-separated task ids (default: every registered task)")
    parser.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent: weight of rank k is 1/k^s")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (base rate)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (per rate in a sweep)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds sent first and left out of the report")
    parser.add_argument("--slo-ms", type=float, default=500.0, help="latency objective for p99 and goodput")
    parser.add_argument("--rates", help="sweep: comma-separated rates, e.g. 10,20,40,80")
    parser.add_argument("--burst-factor", type=float, default=3.0)
    parser.add_argument("--burst-seconds", type=float, default=3.0)
    parser.add_argument("--registrations", type=int, default=20, help="uploads per burst in the registrations scenario")
    parser.add_argument("--rounds", type=int, default=1,
                        help="registrations: steady / upload-burst pairs; each phase's percentiles pool its rounds")
    parser.add_argument("--registration-every", type=float, default=10.0, help="soak: seconds between uploads")
    parser.add_argument("--deadline-ms", type=float, help="send each request's deadline (X-Request-Timeout-Ms); "
                                                           "overload sends the SLO")
    parser.add_argument("--trainer", default="sidecar", choices=TRAINERS,
                        help="train-while-serving: the sidecar API, or `mosaserve train --register` (its defaults, "
                             "or --full-priority)")
    parser.add_argument("--train-seconds", type=float, default=90.0,
                        help="train-while-serving: seconds of load after the job is submitted")
    parser.add_argument("--train-epochs", type=int, default=3, help="train-while-serving: the job's epochs")
    parser.add_argument("--train-size", type=int, default=500, help="train-while-serving: the job's training images")
    parser.add_argument("--concurrency", type=int, default=4, help="multi-task: images in flight (closed loop); "
                                                                   "tasks per image 1, 2, 4, 8 of --tasks")
    parser.add_argument("--adapters", help="folder of *.safetensors adapter files to upload (registrations, soak)")
    parser.add_argument("--token", help="admin token for the uploads (default: MOSASERVE_ADMIN_TOKEN)")
    parser.add_argument("--admin-url", help="send the uploads to the task board's admin port, e.g. "
                                            "http://127.0.0.1:8001 (default: --url)")
    parser.add_argument("--image", help="a PNG or JPEG to send (default: a random PNG)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--model-id-header", action="store_true",
                        help="also send Serve's serve_multiplexed_model_id header (multiplexed deployments)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-remote", action="store_true", help="allow a target that is not loopback")
    parser.add_argument("--out", default="out/loadtest")
