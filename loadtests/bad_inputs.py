"""The bad-input corpus: requests the service must refuse with a clear 4xx, and valid ones beside them.

    python -m mosaserve.loadtests.bad_inputs --out tests/data/bad_inputs

writes one file per request body under `bodies/` and `manifest.json` listing every case (method,
path, headers, body file, the exact status expected and a fragment the error message must hold).
The output depends only on the seed and the library versions, so regenerating reproduces the
checked-in corpus byte for byte. The expected statuses assume the limits and backbone recorded
under "assumes" (the test service's); `corpus_sender` sends the cases over plain HTTP.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from ..adapters.backbone import BackboneSpec
from .bad_adapters import AdapterCases
from .bad_images import PredictCases
from .bad_requests import RequestCases
from .corpus_case import Case, Limits

SEED = 7
REGISTERED_TASK = "known-task"  # the valid task a run registers before sending the corpus
# The tests' tiny ViT (tests/conftest.py TINY_VIT): adapter cases are built against its fingerprint.
CORPUS_BACKBONE = BackboneSpec(
    "vit_tiny_patch16_224", {"img_size": 16, "patch_size": 4, "depth": 3, "embed_dim": 32, "num_heads": 2}
)
MANIFEST = "manifest.json"
BODIES = "bodies"


def build_cases(spec: BackboneSpec = CORPUS_BACKBONE, limits: Limits = Limits(),
                seed: int = SEED) -> tuple[list[Case], str]:
    """Every case, in manifest order, and the backbone fingerprint the adapter cases were built for."""
    predict = PredictCases(REGISTERED_TASK, limits, seed)
    adapters = AdapterCases(spec, REGISTERED_TASK, limits, seed)
    predict_cases, adapter_cases = predict.build(), adapters.build()
    request_cases = RequestCases(REGISTERED_TASK, limits, predict.rgb_png, adapters.valid_file).build()
    cases = predict_cases + request_cases + adapter_cases
    names = [case.name for case in cases]
    duplicates = sorted(name for name, n in Counter(names).items() if n > 1)
    if duplicates:
        raise ValueError(f"case names must be unique: {duplicates}")
    return cases, adapters.info.fingerprint


def manifest(cases: list[Case], body_files: list[str | None], spec: BackboneSpec, fingerprint: str,
             limits: Limits, seed: int) -> dict:
    return {
        "format": "mosaserve-bad-inputs",
        "version": 1,
        "regenerate": "python -m mosaserve.loadtests.bad_inputs --out tests/data/bad_inputs",
        "seed": seed,
        "assumes": {
            "registered_task": REGISTERED_TASK,
            "limits": asdict(limits),
            "backbone": {"name": spec.name, "kwargs": spec.kwargs, "seed": spec.seed, "fingerprint": fingerprint},
            "admin_token": "cases with admin_token true send Authorization: Bearer <the service's admin token>",
        },
        "counts": dict(sorted(Counter(case.category for case in cases).items())),
        "cases": [case.to_manifest(file) for case, file in zip(cases, body_files)],
    }


def write_corpus(out: Path, spec: BackboneSpec = CORPUS_BACKBONE, limits: Limits = Limits(), seed: int = SEED) -> Path:
    cases, fingerprint = build_cases(spec, limits, seed)
    bodies = out / BODIES
    bodies.mkdir(parents=True, exist_ok=True)
    files = [None if case.body is None else f"{BODIES}/{case.name}.bin" for case in cases]
    for case, file in zip(cases, files):
        if file is not None:
            (out / file).write_bytes(case.body)
    for stale in set(bodies.glob("*.bin")) - {out / f for f in files if f}:  # cases renamed since the last run
        stale.unlink()
    path = out / MANIFEST
    path.write_text(json.dumps(manifest(cases, files, spec, fingerprint, limits, seed), indent=1) + "\n")
    return path


def corpus_digest(folder: Path) -> dict[str, str]:
    """sha256 of the manifest and of every body file, by relative path: equal digests, equal corpora."""
    files = [folder / MANIFEST, *sorted((folder / BODIES).glob("*.bin"))]
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write manifest.json and bodies/ into")
    args = parser.parse_args(argv)
    path = write_corpus(args.out)
    doc = json.loads(path.read_text())
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{len(doc['cases'])} cases, {size / 1e6:.2f} MB in {args.out}")
    for category, count in doc["counts"].items():
        print(f"  {category:28s} {count}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
