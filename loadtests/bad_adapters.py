"""Adapter-upload cases of the bad-input corpus: files a registration must refuse, each for one reason.

Files are built against the service's backbone (its fingerprint and shapes), so each case is wrong
in exactly the way its name says and right in every other. This is the one part of the load tests
that uses the adapter library, and only to write files; sending them is plain HTTP.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from dataclasses import replace

import torch
from safetensors.torch import save as safetensors_save

from ..adapters.backbone import BackboneSpec, load_backbone
from ..adapters.config import AdapterConfig
from ..adapters.file_format import METADATA_KEY, AdapterHeader, content_digest, expected_shapes
from .corpus_case import Case, Limits

OCTETS = "application/octet-stream"
NOT_SAFETENSORS = "not a safetensors file"
LABELS = ("cat", "dog", "bird")


class Exploit:
    """Pickles to a call of os.system: what a pickle-based loader would run on load."""

    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/mosaserve-corpus-pwned",))


def craft(header: dict, tensors: dict[str, torch.Tensor]) -> bytes:
    """A file written without validation, as an attacker or a buggy writer would."""
    return safetensors_save(tensors, metadata={METADATA_KEY: json.dumps(header, sort_keys=True)})


def random_tensors(header: AdapterHeader, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) * 0.1 for name, shape in expected_shapes(header).items()}


def pickle_archive() -> bytes:
    """A zip laid out as torch.save writes it, with a fixed timestamp so the corpus is reproducible."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in (("archive/data.pkl", pickle.dumps(Exploit(), protocol=2)), ("archive/version", b"3\n")):
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


class AdapterCases:
    """PUT cases, each against a task id of its own (never registered) unless it targets the registered task."""

    def __init__(self, spec: BackboneSpec, registered_task: str, limits: Limits, seed: int) -> None:
        _, self.info = load_backbone(spec)
        _, self.other_info = load_backbone(replace(spec, seed=spec.seed + 1))  # same shapes, other weights
        self.registered_task, self.limits, self.seed = registered_task, limits, seed
        self.header = AdapterHeader(AdapterConfig(method="mosa", r=4), self.info, LABELS,
                                    {"source": "bad-input corpus"})
        self.tensors = random_tensors(self.header, seed)
        self.valid_file = self.file()
        self.cases: list[Case] = []

    # --- building files ---------------------------------------------------------------------
    def parts(self, header: AdapterHeader | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
        """A header dict and tensors that agree (digest included); edit either to break one thing."""
        header = header or self.header
        source = self.tensors if header is self.header else random_tensors(header, self.seed)
        tensors = {name: tensor.clone() for name, tensor in source.items()}
        return header.to_dict(content_digest(tensors)), tensors

    def file(self, edit_header=None, edit_tensors=None, header: AdapterHeader | None = None,
             redigest: bool = True) -> bytes:
        """A file with the header and/or tensors edited; the digest follows the edited tensors unless told not to."""
        raw, tensors = self.parts(header)
        if edit_tensors is not None:
            edit_tensors(tensors)
            if redigest:
                raw["content_sha256"] = content_digest(tensors)
        if edit_header is not None:
            edit_header(raw)
        return craft(raw, tensors)

    def add(self, name: str, category: str, status: int, fragment: str, body: bytes, task: str | None = None,
            **extra) -> None:
        path = f"/v1/tasks/{task or 'bad-adapter-' + str(len(self.cases))}"
        self.cases.append(Case(f"adapter-{name}", category, "PUT", path, status, fragment, body, OCTETS,
                               admin_token=True, **extra))

    def build(self) -> list[Case]:
        for part in (self.not_safetensors, self.pickles, self.header_length, self.headers, self.config_fields,
                     self.fingerprints, self.shapes, self.non_finite, self.tampered, self.oversized, self.replacements):
            part()
        return self.cases

    # --- the cases --------------------------------------------------------------------------
    def not_safetensors(self) -> None:
        c = "adapter-not-safetensors"
        for name, data in (("text", b"hello, I am an adapter, trust me"), ("json", b'{"adapter": {"method": "mosa"}}'),
                           ("png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64), ("zip", b"PK\x03\x04" + b"\0" * 60),
                           ("numpy", b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'shape': (3,), }"),
                           ("random-4096", bytes((i * 73 + 41) % 256 for i in range(4096)))):
            self.add(name, c, 422, NOT_SAFETENSORS, data)
        self.add("seven-bytes", c, 422, "shorter than the 8-byte header length", b"\x01" * 7)
        self.add("empty", c, 422, "empty body: upload the adapter file", b"")
        foreign = safetensors_save({"weight": torch.zeros(4)})
        self.add("foreign-safetensors", c, 422, "not a mosaserve adapter", foreign)
        self.add("foreign-safetensors-other-metadata", c, 422, "not a mosaserve adapter",
                 safetensors_save({"weight": torch.zeros(4)}, metadata={"format": "pt"}))

    def pickles(self) -> None:
        c = "adapter-pickle"
        for protocol in (0, 2, 4, 5):
            self.add(f"pickle-protocol-{protocol}", c, 422, NOT_SAFETENSORS, pickle.dumps(Exploit(), protocol=protocol),
                     note="never unpickled: refused by its header length")
        self.add("torch-save-archive", c, 422, NOT_SAFETENSORS, pickle_archive())
        self.add("pickle-of-tensor-dict", c, 422, NOT_SAFETENSORS, pickle.dumps({"head.weight": [[0.0] * 32] * 3}))

    def header_length(self) -> None:
        c, valid = "adapter-header-length", self.valid_file
        (length,) = struct.unpack("<Q", valid[:8])
        for name, forged in (("max-u64", 2**64 - 1), ("terabyte", 2**40), ("past-end-by-one", len(valid) - 7),
                             ("over-header-limit", 1024 * 1024 + 1)):
            self.add(f"length-{name}", c, 422, "header length field says", struct.pack("<Q", forged) + valid[8:])
        json_end = len(valid[8 : 8 + length].rstrip(b" "))  # the writer pads the header with spaces
        for name, forged in (("zero", 0), ("short-by-one", json_end - 1), ("into-tensor-data", length + 16)):
            self.add(f"length-{name}", c, 422, "header is not JSON", struct.pack("<Q", forged) + valid[8:])
        for name, header in (("array", b"[1, 2, 3]"), ("metadata-not-strings", b'{"__metadata__": {"mosaserve": 7}}'),
                             ("metadata-array", b'{"__metadata__": ["mosaserve"]}')):
            self.add(f"header-{name}", c, 422, "malformed __metadata__", struct.pack("<Q", len(header)) + header)
        bad_utf8 = b'{"__metadata__": {"a": "\xff\xfe"}}'
        self.add("header-invalid-utf8", c, 422, "header is not JSON", struct.pack("<Q", len(bad_utf8)) + bad_utf8)

    def headers(self) -> None:
        c = "adapter-header"

        def metadata_only(text: str) -> bytes:
            return safetensors_save(dict(self.tensors), metadata={METADATA_KEY: text})

        self.add("metadata-not-json", c, 422, "adapter header is not valid JSON", metadata_only("{not json"))
        self.add("metadata-json-array", c, 422, "adapter header must be a JSON object", metadata_only("[]"))
        for field in ("format", "format_version", "adapter", "backbone", "num_classes", "labels", "provenance",
                      "content_sha256"):
            self.add(f"missing-{field}", c, 422, f"missing fields: ['{field}']",
                     self.file(lambda h, f=field: h.pop(f)), note="a missing header field")
        self.add("extra-field", c, 422, "unknown fields: ['surprise']", self.file(lambda h: h.update(surprise=1)))
        self.add("backbone-missing-mean", c, 422, "backbone is missing fields: ['mean']",
                 self.file(lambda h: h["backbone"].pop("mean")))
        self.add("backbone-extra-field", c, 422, "backbone has unknown fields: ['weights_url']",
                 self.file(lambda h: h["backbone"].update(weights_url="http://example.invalid/w")))
        edits = (
            ("format-name", "format is 'safetensors'", lambda h: h.update(format="safetensors")),
            ("format-version-3", "format_version 3 is not supported", lambda h: h.update(format_version=3)),
            ("fingerprint-not-hex", "fingerprint must be 64 hex characters",
             lambda h: h["backbone"].update(fingerprint="z" * 64)),
            ("input-size-two-values", "input_size must be three positive integers",
             lambda h: h["backbone"].update(input_size=[3, 16])),
            ("mean-nan", "mean must be 3 finite numbers", lambda h: h["backbone"].update(mean=[float("nan")] * 3)),
            ("std-zero", "std must be positive", lambda h: h["backbone"].update(std=[0.0, 0.5, 0.5])),
            ("crop-pct-zero", "crop_pct must be in (0, 1]", lambda h: h["backbone"].update(crop_pct=0)),
            ("num-features-string", "'num_features' has the wrong type",
             lambda h: h["backbone"].update(num_features="32")),
            ("depth-zero", "num_features, depth and num_patches must be positive", lambda h: h["backbone"].update(depth=0)),
            ("num-patches-zero", "num_patches must be positive", lambda h: h["backbone"].update(num_patches=0)),
            ("token-head-without-patch-count", "'tokens' head needs the backbone's num_patches",
             lambda h: h["backbone"].update(num_patches=None)),
            ("head-unknown-kind", "head must be one of", lambda h: h["adapter"].update(head="cnn")),
            ("head-rank-zero", "head_rank must be a positive integer", lambda h: h["adapter"].update(head_rank=0)),
            ("format-1-naming-a-head", "adapter config has unknown fields: ['head', 'head_rank']",
             lambda h: (h.update(format_version=1), h["backbone"].pop("num_patches"))),
            ("labels-duplicate", "labels must be distinct", lambda h: h.update(labels=["cat", "cat", "dog"])),
            ("label-empty", "labels must be a list of non-empty strings",
             lambda h: h.update(labels=["cat", "", "dog"])),
            ("label-too-long", "at most 256 characters", lambda h: h.update(labels=["cat", "d" * 257, "bird"])),
            ("num-classes-zero", "num_classes must be a positive integer", lambda h: h.update(num_classes=0)),
            ("num-classes-string", "num_classes must be a positive integer", lambda h: h.update(num_classes="3")),
            ("num-classes-not-label-count", "num_classes is 4 but 3 labels are given",
             lambda h: h.update(num_classes=4)),
            ("provenance-nested", "provenance entry 'run' must be a string, number or boolean",
             lambda h: h.update(provenance={"run": {"id": 1}})),
            ("provenance-list", "provenance must be an object", lambda h: h.update(provenance=[1])),
            ("digest-not-hex", "content_sha256 must be 64 hex characters", lambda h: h.update(content_sha256="xyz")),
        )
        for name, fragment, edit in edits:
            self.add(name, c, 422, fragment, self.file(edit))

    def config_fields(self) -> None:
        c = "adapter-config"
        for field in ("scale", "r", "target_blocks"):
            self.add(f"config-missing-{field}", c, 422, f"adapter config is missing fields: ['{field}']",
                     self.file(lambda h, f=field: h["adapter"].pop(f)), note="a default must not stand in for it")
        self.add("config-extra-field", c, 422, "adapter config has unknown fields: ['temperature']",
                 self.file(lambda h: h["adapter"].update(temperature=2.0)))
        edits = (
            ("method-unknown", "method must be one of", lambda a: a.update(method="sgd")),
            ("r-string", "'r' has the wrong type", lambda a: a.update(r="4")),
            ("r-bool", "'r' has the wrong type", lambda a: a.update(r=True)),
            ("r-zero", "r must be a positive integer", lambda a: a.update(r=0)),
            ("share-unknown", "share must be one of", lambda a: a.update(share="sideways")),
            ("target-block-missing", "target block 7 does not exist in a backbone of 3 blocks",
             lambda a: a.update(target_blocks=[7])),
            ("target-block-negative", "target_blocks must be distinct non-negative",
             lambda a: a.update(target_blocks=[-1])),
        )
        for name, fragment, edit in edits:
            self.add(f"config-{name}", c, 422, fragment, self.file(lambda h, e=edit: e(h["adapter"])))

    def fingerprints(self) -> None:
        c, info = "adapter-fingerprint", self.info
        self.add("fingerprint-zeros", c, 422, "weights fingerprint",
                 self.file(lambda h: h["backbone"].update(fingerprint="0" * 64)))
        other = AdapterHeader(self.header.adapter, self.other_info, LABELS)
        self.add("fingerprint-other-backbone", c, 422, "weights fingerprint", self.file(header=other),
                 note="the same architecture with other weights (seed + 1)")
        wide = AdapterHeader(self.header.adapter, replace(info, num_features=2 * info.num_features), LABELS)
        self.add("header-wider-backbone", c, 422, "adapter header describes a backbone of", self.file(header=wide),
                 note="right fingerprint, shapes made for a wider backbone: refused at registration, not at inference")
        deep = AdapterHeader(self.header.adapter, replace(info, depth=info.depth + 2), LABELS)
        self.add("header-deeper-backbone", c, 422, "adapter header describes a backbone of", self.file(header=deep))
        last = AdapterHeader(AdapterConfig(method="mosa", r=4, target_blocks=(info.depth + 1,)),
                             replace(info, depth=info.depth + 2), LABELS)
        self.add("header-block-beyond-backbone", c, 422, "adapter header describes a backbone of",
                 self.file(header=last))

    def shapes(self) -> None:
        c, dim, r = "adapter-shape", self.info.num_features, self.header.adapter.r
        head_in = self.info.num_patches * self.header.adapter.head_rank  # what the token head's out layer reads

        def put(name: str, value: torch.Tensor):
            return lambda t: t.update({name: value})

        edits = (
            ("down-wrong-rank", "'blocks.0.down.weight' has shape (5, 32), expected (4, 32)",
             put("blocks.0.down.weight", torch.zeros(r + 1, dim))),
            ("down-transposed", "'blocks.1.down.weight' has shape (32, 4)",
             put("blocks.1.down.weight", torch.zeros(dim, r))),
            ("head-four-rows-three-labels", f"'head.out.weight' has shape (4, {head_in}), expected (3, {head_in})",
             put("head.out.weight", torch.zeros(4, head_in))),
            ("head-bias-scalar", "'head.out.bias' has shape ()", put("head.out.bias", torch.tensor(0.0))),
            ("norm-flattened", "'blocks.2.norm.weight' has shape (1, 32)",
             put("blocks.2.norm.weight", torch.ones(1, dim))),
            ("missing-head-bias", "missing tensors: ['head.out.bias']", lambda t: t.pop("head.out.bias")),
            ("missing-block-up", "missing tensors: ['blocks.1.up.weight']", lambda t: t.pop("blocks.1.up.weight")),
            ("extra-block", "unexpected tensors: ['blocks.9.up.weight']",
             put("blocks.9.up.weight", torch.zeros(dim, r))),
            ("extra-lora-tensor", "unexpected tensors: ['blocks.0.qkv.lora_a']",
             put("blocks.0.qkv.lora_a", torch.zeros(r, dim))),
            ("dtype-int32", "has dtype torch.int32", put("head.out.bias", torch.zeros(3, dtype=torch.int32))),
            ("dtype-float64", "has dtype torch.float64", put("head.out.bias", torch.zeros(3, dtype=torch.float64))),
            ("dtype-uint8", "has dtype torch.uint8", put("head.out.weight", torch.zeros(3, head_in, dtype=torch.uint8))),
        )
        for name, fragment, edit in edits:
            self.add(name, c, 422, fragment, self.file(edit_tensors=edit))
        five = AdapterHeader(self.header.adapter, self.info, ("a", "b", "c", "d", "e"))
        self.add("five-labels-three-class-head", c, 422,
                 f"'head.out.weight' has shape (3, {head_in}), expected (5, {head_in})",
                 self.file(lambda h: h.update(num_classes=5, labels=list(five.labels))), note="wrong class count")

    def non_finite(self) -> None:
        c = "adapter-non-finite"

        def poke(name: str, value: float, dtype: torch.dtype = torch.float32):
            def edit(t):
                t[name] = t[name].to(dtype)
                t[name].view(-1)[1] = value
            return edit

        for name, tensor, value, dtype in (("nan-up", "blocks.1.up.weight", float("nan"), torch.float32),
                                           ("inf-head", "head.out.weight", float("inf"), torch.float32),
                                           ("minus-inf-norm-bias", "blocks.0.norm.bias", float("-inf"), torch.float32),
                                           ("nan-float16", "blocks.2.down.weight", float("nan"), torch.float16),
                                           ("inf-bfloat16", "head.out.bias", float("inf"), torch.bfloat16)):
            self.add(name, c, 422, f"tensor '{tensor}' holds NaN or infinite values",
                     self.file(edit_tensors=poke(tensor, value, dtype)))
        for field, value in (("scale", float("nan")), ("scale", float("inf")), ("consistency_weight", float("nan")),
                             ("dropout", float("nan"))):
            self.add(f"config-{field}-{value}", c, 422, f"{field} must be a finite number",
                     self.file(lambda h, f=field, v=value: h["adapter"].update({f: v})),
                     note="a non-finite hyper-parameter would make every prediction NaN")
        lora = AdapterHeader(AdapterConfig(method="lora", r=4), self.info, LABELS)
        self.add("config-lora-alpha-inf", c, 422, "lora_alpha must be a finite number",
                 self.file(lambda h: h["adapter"].update(lora_alpha=float("inf")), header=lora))

    def tampered(self) -> None:
        c, valid = "adapter-tampered", self.valid_file
        flipped = bytearray(valid)
        flipped[-5] ^= 0x01
        self.add("one-bit-flipped", c, 422, "does not match the recorded sha256", bytes(flipped))
        self.add("digest-of-other-content", c, 422, "does not match the recorded sha256",
                 self.file(lambda h: h.update(content_sha256="ab" * 32)))
        self.add("tensor-edited-digest-kept", c, 422, "does not match the recorded sha256",
                 self.file(edit_tensors=lambda t: t["head.out.bias"].add_(1.0), redigest=False))
        self.add("truncated-tensor-data", c, 422, "corrupt safetensors data", valid[:-100])
        self.add("truncated-in-header", c, 422, "header length field says", valid[:200])
        self.add("trailing-garbage", c, 422, "corrupt safetensors data", valid + b"\0" * 64)
        (length,) = struct.unpack("<Q", valid[:8])
        header = json.loads(valid[8 : 8 + length])
        first = sorted(k for k in header if k != "__metadata__")[0]
        header[first]["data_offsets"][1] += 4  # overlaps the next tensor
        forged = json.dumps(header).encode()
        self.add("overlapping-offsets", c, 422, "corrupt safetensors data",
                 struct.pack("<Q", len(forged)) + forged + valid[8 + length :])

    def oversized(self) -> None:
        c, limit = "adapter-oversized", self.limits.max_adapter_bytes
        repeat = limit // 1024 + 64
        self.add("over-limit", c, 413, f"adapter file is {repeat * 1024} bytes; the limit is {limit}", b"\0" * 1024,
                 body_repeat=repeat)
        self.add("over-limit-chunked", c, 413, f"adapter file is larger than the limit of {limit} bytes", b"\0" * 1024,
                 body_repeat=repeat, chunked=True)
        self.add("valid-padded-over-limit", c, 413, f"adapter file is {limit + 1} bytes", self.valid_file,
                 pad_to=limit + 1)

    def replacements(self) -> None:
        """Bad files PUT over the registered task: each must leave its served version as it was."""
        c, task = "adapter-replacement", self.registered_task
        self.add("replace-with-nan", c, 422, "holds NaN or infinite values",
                 self.file(edit_tensors=lambda t: t["head.out.weight"].fill_(float("nan"))), task=task)
        self.add("replace-with-other-backbone", c, 422, "weights fingerprint",
                 self.file(header=AdapterHeader(self.header.adapter, self.other_info, LABELS)), task=task)
        self.add("replace-with-pickle", c, 422, NOT_SAFETENSORS, pickle.dumps(Exploit()), task=task)
        self.add("replace-with-truncated", c, 422, "corrupt safetensors data", self.valid_file[:-100], task=task)
