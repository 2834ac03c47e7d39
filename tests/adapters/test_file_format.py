"""The adapter file: round trip, and one clear error for every kind of bad file."""

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save as safetensors_save

from mosaserve.adapters.config import KIND_OF_METHOD, METHODS, AdapterConfig, AdapterKind
from mosaserve.adapters.errors import AdapterConfigError, AdapterFileError, BackboneMismatchError
from mosaserve.adapters.file_format import (
    METADATA_KEY, AdapterHeader, content_digest, encode_adapter, load_adapter, read_header, save_adapter,
)
from mosaserve.adapters.loading import build_adapted_model
from mosaserve.adapters.model import AdaptedViT

LABELS = ("cat", "dog", "bird")


def trained_model(backbone, method: str) -> AdaptedViT:
    model = AdaptedViT(backbone, AdapterConfig(method=method, r=4), num_classes=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def header_and_tensors(tiny_backbone, method="mosa"):
    backbone, info = tiny_backbone
    model = trained_model(backbone, method)
    return AdapterHeader(AdapterConfig(method=method, r=4), info, LABELS, {"dataset": "unit"}), model.export_tensors()


def craft(header_dict: dict, tensors: dict) -> bytes:
    """A file written without validation, as an attacker or a buggy writer would."""
    return safetensors_save(tensors, metadata={METADATA_KEY: json.dumps(header_dict)})


def valid_parts(tiny_backbone):
    header, tensors = header_and_tensors(tiny_backbone)
    return header.to_dict(content_digest(tensors)), tensors


@pytest.mark.parametrize("method", ["mosa", "adapter", "lora", "linear"])
def test_save_load_forward_gives_identical_logits(tiny_backbone, tiny_spec, images, tmp_path, method):
    from mosaserve.adapters.backbone import load_backbone

    backbone, info = tiny_backbone
    model = trained_model(backbone, method)
    expected = model(images)
    path = save_adapter(tmp_path / "task.safetensors", AdapterHeader(model.config, info, LABELS), model.export_tensors())
    loaded = load_adapter(path, expected_fingerprint=info.fingerprint)
    assert loaded.header.adapter == model.config and loaded.header.labels == LABELS
    torch.manual_seed(0)
    fresh_backbone, fresh_info = load_backbone(tiny_spec)  # same seed: the same weights
    served = build_adapted_model(fresh_backbone, fresh_info, loaded)
    torch.testing.assert_close(served(images), expected, rtol=0, atol=0 if method != "mosa" else 1e-6)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize("method", METHODS)
def test_kind_round_trips_through_the_file_header(tiny_backbone, method):
    header, tensors = header_and_tensors(tiny_backbone, method)
    loaded = load_adapter(encode_adapter(header, tensors)).header.adapter
    assert loaded.kind is header.adapter.kind is KIND_OF_METHOD[method]
    # Still a plain string to JSON, f-strings and string comparisons.
    assert loaded.kind == KIND_OF_METHOD[method].value == f"{loaded.kind}" == json.loads(json.dumps(loaded.kind))


def test_every_method_has_a_kind_and_every_kind_a_method():
    assert set(KIND_OF_METHOD) == set(METHODS) and set(KIND_OF_METHOD.values()) == set(AdapterKind)


def test_loading_from_bytes_equals_loading_from_path(tiny_backbone, tmp_path):
    header, tensors = header_and_tensors(tiny_backbone)
    path = save_adapter(tmp_path / "a.safetensors", header, tensors)
    a, b = load_adapter(path), load_adapter(path.read_bytes())
    assert a.header == b.header and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_the_header_alone_is_read_from_a_stored_file_and_a_cut_or_padded_file_refused(tiny_backbone, tmp_path):
    header, tensors = header_and_tensors(tiny_backbone)
    path = save_adapter(tmp_path / "a.safetensors", header, tensors)
    fingerprint = tiny_backbone[1].fingerprint
    assert read_header(path, fingerprint) == header
    with pytest.raises(BackboneMismatchError, match="fingerprint"):
        read_header(path, "0" * 64)
    whole = path.read_bytes()
    for damaged in (whole[:-1], whole + b"\0", whole[:6]):
        path.write_bytes(damaged)
        with pytest.raises(AdapterFileError):
            read_header(path, fingerprint)
    path.write_bytes(craft({"x": 1}, {"w": torch.zeros(2)}).replace(b'"data_offsets":[0,8]', b'"data_offsets":"no8"'))
    with pytest.raises(AdapterFileError, match="malformed tensor entry"):
        read_header(path, fingerprint)


def test_tampered_tensor_bytes_are_detected(tiny_backbone):
    header, tensors = header_and_tensors(tiny_backbone)
    data = bytearray(encode_adapter(header, tensors))
    data[-3] ^= 0x40  # one bit in the last tensor's data
    with pytest.raises(AdapterFileError, match="sha256"):
        load_adapter(bytes(data))


def test_wrong_backbone_fingerprint_is_refused(tiny_backbone):
    header, tensors = header_and_tensors(tiny_backbone)
    with pytest.raises(BackboneMismatchError, match="fingerprint"):
        load_adapter(encode_adapter(header, tensors), expected_fingerprint="0" * 64)


def test_nan_tensor_is_refused_on_write_and_on_read(tiny_backbone):
    header, tensors = header_and_tensors(tiny_backbone)
    tensors["blocks.1.up.weight"][0, 0] = float("nan")
    with pytest.raises(AdapterFileError, match="blocks.1.up.weight.*NaN"):
        encode_adapter(header, tensors)
    with pytest.raises(AdapterFileError, match="NaN or infinite"):
        load_adapter(craft(header.to_dict(content_digest(tensors)), tensors))


@pytest.mark.parametrize("field, value", [("scale", float("nan")), ("scale", float("inf")),
                                          ("lora_alpha", float("-inf")), ("consistency_weight", float("nan")),
                                          ("scale", 10**400)])  # an integer no float can hold
def test_non_finite_hyper_parameters_are_refused(tiny_backbone, field, value):
    """A NaN scale passes every range check and turns every prediction into NaN."""
    with pytest.raises(AdapterConfigError, match=f"{field} must be a finite number"):
        AdapterConfig(**{field: value})
    raw, tensors = valid_parts(tiny_backbone)
    raw["adapter"][field] = value  # JSON headers can carry NaN and Infinity
    with pytest.raises(AdapterFileError, match=f"{field} must be a finite number"):
        load_adapter(craft(raw, tensors))


@pytest.mark.parametrize("field", ["scale", "r", "lora_alpha", "target_blocks"])
def test_missing_adapter_config_field_is_named_not_defaulted(tiny_backbone, field):
    raw, tensors = valid_parts(tiny_backbone)
    del raw["adapter"][field]
    with pytest.raises(AdapterFileError, match=f"adapter config is missing fields: \\['{field}'\\]"):
        load_adapter(craft(raw, tensors))


@pytest.mark.parametrize("field", ["format", "backbone", "labels", "content_sha256", "adapter"])
def test_missing_header_field_is_named(tiny_backbone, field):
    raw, tensors = valid_parts(tiny_backbone)
    del raw[field]
    with pytest.raises(AdapterFileError, match=f"missing fields: \\['{field}'\\]"):
        load_adapter(craft(raw, tensors))


def test_missing_backbone_field_and_extra_field_are_named(tiny_backbone):
    raw, tensors = valid_parts(tiny_backbone)
    del raw["backbone"]["mean"]
    with pytest.raises(AdapterFileError, match="backbone is missing fields: \\['mean'\\]"):
        load_adapter(craft(raw, tensors))
    raw, tensors = valid_parts(tiny_backbone)
    raw["surprise"] = 1
    with pytest.raises(AdapterFileError, match="unknown fields: \\['surprise'\\]"):
        load_adapter(craft(raw, tensors))


def test_wrong_shape_is_named(tiny_backbone):
    raw, tensors = valid_parts(tiny_backbone)
    tensors["blocks.0.down.weight"] = torch.zeros(5, 32)
    raw["content_sha256"] = content_digest(tensors)
    with pytest.raises(AdapterFileError, match="blocks.0.down.weight.*shape \\(5, 32\\), expected \\(4, 32\\)"):
        load_adapter(craft(raw, tensors))


def test_missing_and_extra_tensors_are_named(tiny_backbone):
    raw, tensors = valid_parts(tiny_backbone)
    del tensors["head.out.bias"]
    with pytest.raises(AdapterFileError, match="missing tensors: \\['head.out.bias'\\]"):
        load_adapter(craft(raw, tensors))
    raw, tensors = valid_parts(tiny_backbone)
    tensors["blocks.9.up.weight"] = torch.zeros(1)
    with pytest.raises(AdapterFileError, match="unexpected tensors"):
        load_adapter(craft(raw, tensors))


def test_wrong_dtype_and_class_count_are_refused(tiny_backbone):
    raw, tensors = valid_parts(tiny_backbone)
    tensors["head.out.bias"] = tensors["head.out.bias"].to(torch.int32)
    with pytest.raises(AdapterFileError, match="dtype"):
        load_adapter(craft(raw, tensors))
    raw, tensors = valid_parts(tiny_backbone)
    raw["num_classes"] = 4
    with pytest.raises(AdapterFileError, match="num_classes is 4 but 3 labels"):
        load_adapter(craft(raw, tensors))


def test_numbers_past_what_a_float_or_the_json_reader_holds_are_refused_not_crashed_on(tiny_backbone):
    raw, tensors = valid_parts(tiny_backbone)
    raw["backbone"]["mean"][0] = 10**400
    with pytest.raises(AdapterFileError, match="backbone mean must be 3 finite numbers"):
        load_adapter(craft(raw, tensors))
    raw, tensors = valid_parts(tiny_backbone)
    text = json.dumps(raw).replace('"dataset": "unit"', '"dataset": ' + "1" * 5000)
    with pytest.raises(AdapterFileError, match="adapter header is not valid JSON"):
        load_adapter(safetensors_save(tensors, metadata={METADATA_KEY: text}))


def test_a_bottleneck_wider_than_the_backbone_is_refused(tiny_backbone):
    raw, tensors = valid_parts(tiny_backbone)
    raw["adapter"]["r"] = 33  # the tiny ViT has 32 features
    with pytest.raises(AdapterFileError, match="r = 33 is wider than the backbone \\(32 features\\)"):
        load_adapter(craft(raw, tensors))


def test_bad_hyper_parameters_in_the_header_are_refused(tiny_backbone):
    raw, tensors = valid_parts(tiny_backbone)
    raw["adapter"]["share"] = "sideways"
    with pytest.raises(AdapterFileError, match="share"):
        load_adapter(craft(raw, tensors))
    raw["adapter"]["share"], raw["adapter"]["r"] = "down", "4"
    with pytest.raises(AdapterFileError, match="'r' has the wrong type"):
        load_adapter(craft(raw, tensors))


class Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('/tmp/mosaserve-pwned').write_text('x')",))


def test_a_pickle_is_refused_and_never_executed(tmp_path):
    target = tmp_path / "evil.safetensors"
    target.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(AdapterFileError, match="not a safetensors file"):
        load_adapter(target)
    import pathlib
    assert not pathlib.Path("/tmp/mosaserve-pwned").exists()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "shorter than the 8-byte header"),
        (struct.pack("<Q", 2**40) + b"{}", "header length field"),
        (struct.pack("<Q", 4) + b"nope", "header is not JSON"),
        # Past what Python's JSON reader takes: an integer of 5,000 digits, arrays nested 100,000 deep.
        (struct.pack("<Q", 5007) + b'{"x": ' + b"1" * 5000 + b"}", "header is not JSON"),
        (struct.pack("<Q", 100_000) + b"[" * 100_000, "header is not JSON"),
    ],
)
def test_malformed_bytes_are_refused(data, message):
    with pytest.raises(AdapterFileError, match=message):
        load_adapter(data)


def test_truncated_file_and_foreign_safetensors_are_refused(tiny_backbone):
    header, tensors = header_and_tensors(tiny_backbone)
    data = encode_adapter(header, tensors)
    with pytest.raises(AdapterFileError):
        load_adapter(data[: len(data) - 10])
    with pytest.raises(AdapterFileError, match="no 'mosaserve' entry"):
        load_adapter(safetensors_save({"w": torch.zeros(2)}))


def test_oversized_file_is_refused_before_reading(tiny_backbone, tmp_path):
    header, tensors = header_and_tensors(tiny_backbone)
    path = save_adapter(tmp_path / "a.safetensors", header, tensors)
    with pytest.raises(AdapterFileError, match="over the limit"):
        load_adapter(path, max_bytes=100)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(AdapterFileError, match="cannot read adapter file"):
        load_adapter(tmp_path / "nope.safetensors")
