"""The Open Inference Protocol (KServe V2, as Triton, KServe and MLServer speak it), read and written.

A task is a model and its adapter version the model version. A request holds one BYTES input,
`image`, shape [N]: encoded images, as base64 strings (or data: URLs) in JSON, or raw in the binary
tensor extension (a JSON header of `Inference-Header-Content-Length` bytes, then each element as a
4-byte little-endian length and its bytes). Outputs: `probabilities` (FP32 [N, classes], in the
order of the task's labels; or Triton's classification extension with `classification: k`) and
`labels` (BYTES [N, k], most probable first); the bare backbone answers `embedding` (FP32 [N, dim]).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from ...runtime.answers import Answer
from .errors import BadRequest, TooLarge
from .requests import decode_base64, json_document

INPUT = "image"
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class OutputRequest:
    name: str
    binary: bool  # in the binary tensor extension rather than as a JSON list
    classification: int = 0  # Triton's classification extension: k "probability:index:label" strings per image


@dataclass(frozen=True)
class InferRequest:
    request_id: str | None
    images: list[bytes]
    outputs: list[OutputRequest]  # empty: every output of the model
    top_k: int | None  # the `labels` output's k (request parameter `top_k`)


def parse_infer_request(raw: bytes, header_length: str | None, max_images: int) -> InferRequest:
    document, binary = _split(raw, header_length)
    if not isinstance(document, dict):
        raise BadRequest("the inference request must be a JSON object")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"the inference request must hold exactly one input, {INPUT!r} (BYTES, shape [N])")
    images = _images(inputs[0], binary, max_images)
    parameters = _parameters(document)
    top_k = parameters.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool)):
        raise BadRequest(f"parameter top_k must be an integer, got {top_k!r}")
    all_binary = parameters.get("binary_data_output") is True
    outputs = document.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        raise BadRequest('"outputs" must be a list of objects with a "name"')
    request_id = document.get("id")
    return InferRequest(request_id if isinstance(request_id, str) else None, images,
                        [_output_request(o, all_binary) for o in outputs], top_k)


def _split(raw: bytes, header_length: str | None) -> tuple[object, bytes]:
    """The JSON header and the binary tensors after it (none without the header length)."""
    if header_length is None:
        return json_document(raw), b""
    if not header_length.isascii() or not header_length.isdigit() or int(header_length) > len(raw):
        raise BadRequest(f"{HEADER_LENGTH} must be the byte length of the JSON header, at most the body's "
                         f"{len(raw)} bytes; got {header_length!r}")
    return json_document(raw[: int(header_length)]), raw[int(header_length):]


def _parameters(holder: dict) -> dict:
    parameters = holder.get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequest('"parameters" must be an object')
    return parameters


def _images(tensor: dict, binary: bytes, max_images: int) -> list[bytes]:
    if tensor.get("name") != INPUT or tensor.get("datatype") != "BYTES":
        raise BadRequest(f"unknown input {tensor.get('name')!r} of type {tensor.get('datatype')!r}: the model "
                         f"takes one BYTES input {INPUT!r}, shape [N], of encoded images")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape) or not 1 <= len(shape) <= 2:
        raise BadRequest(f"input {INPUT!r} needs a shape [N] (or [N, 1]) of non-negative integers, got {shape!r}")
    count = shape[0] * (shape[1] if len(shape) == 2 else 1)
    if count > max_images:
        raise TooLarge(f"{count} images in one request; the limit is {max_images} (max_images_per_request)")
    size = _parameters(tensor).get("binary_data_size")
    if size is not None:
        if size != len(binary):
            raise BadRequest(f"input {INPUT!r} declares {size!r} binary bytes; the body holds {len(binary)}")
        images = _bytes_elements(binary)
    else:
        images = [decode_base64(item, i) for i, item in enumerate(_flat(tensor.get("data")))]
    if len(images) != count or count == 0:
        raise BadRequest(f"input {INPUT!r} has shape {shape} but holds {len(images)} images; send at least one")
    return images


def _flat(data: object) -> list:
    if not isinstance(data, list):
        raise BadRequest(f'input {INPUT!r} needs "data": a list of base64 strings, or binary data')
    return [x for item in data for x in (_flat(item) if isinstance(item, list) else [item])]


def _bytes_elements(binary: bytes) -> list[bytes]:
    """A BYTES tensor in the binary extension: each element a uint32 little-endian length, then its bytes."""
    elements, at = [], 0
    while at < len(binary):
        if at + 4 > len(binary):
            raise BadRequest(f"input {INPUT!r}: binary data ends inside an element's length")
        (length,) = struct.unpack_from("<I", binary, at)
        if at + 4 + length > len(binary):
            raise BadRequest(f"input {INPUT!r}: an element of {length} bytes runs past the binary data")
        elements.append(binary[at + 4 : at + 4 + length])
        at += 4 + length
    return elements


def _output_request(output: dict, all_binary: bool) -> OutputRequest:
    parameters = _parameters(output)
    k = parameters.get("classification", 0)
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise BadRequest(f"output {output['name']!r}: classification must be a non-negative integer, got {k!r}")
    return OutputRequest(output["name"], bool(parameters.get("binary_data", all_binary)), k)


# --- answers -----------------------------------------------------------------------------------
def model_metadata(task: dict) -> dict:
    """A task (as GET /v1/tasks/{id} shows it) as the protocol's model metadata."""
    if task.get("output") == "embedding":
        outputs = [{"name": "embedding", "datatype": "FP32", "shape": [-1, task["embedding_dim"]]}]
    else:
        outputs = [{"name": "probabilities", "datatype": "FP32", "shape": [-1, task["num_classes"]]},
                   {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]}]
    versions = [] if task["version"] is None else [str(task["version"])]
    return {"name": task["task_id"], "versions": versions, "platform": "mosaserve",
            "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}], "outputs": outputs}


def infer_response(task_id: str, request: InferRequest, answers: list[Answer]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when any output is binary (None: all JSON)."""
    tensors = _tensors(answers)
    wanted = request.outputs or [OutputRequest(name, binary=False) for name in tensors]
    outputs, binary = [], b""
    for output in wanted:
        name, datatype, shape, values = _tensor(output, tensors)
        entry = {"name": name, "datatype": datatype, "shape": shape}
        if output.binary:
            data = _binary(datatype, values)
            entry["parameters"] = {"binary_data_size": len(data)}
            binary += data
        else:
            entry["data"] = values
        outputs.append(entry)
    version = answers[0].version
    header = {"model_name": task_id, "model_version": "" if version is None else str(version), "outputs": outputs}
    if request.request_id is not None:
        header["id"] = request.request_id
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + binary, (len(head) if any(o.binary for o in wanted) else None)


def _tensors(answers: list[Answer]) -> dict[str, tuple[str, list[int], list]]:
    """Every output of the answers: name -> (datatype, shape, values flattened in row-major order)."""
    n = len(answers)
    if answers[0].embedding is not None:
        return {"embedding": ("FP32", [n, len(answers[0].embedding)], [v for a in answers for v in a.embedding])}
    k = len(answers[0].top)
    return {"probabilities": ("FP32", [n, len(answers[0].probabilities)], [p for a in answers for p in a.probabilities]),
            "labels": ("BYTES", [n, k], [label for a in answers for label, _ in a.top])}


def _tensor(output: OutputRequest, tensors: dict) -> tuple[str, str, list[int], list]:
    if output.name not in tensors:
        raise BadRequest(f"unknown output {output.name!r}; this model has {sorted(tensors)}")
    datatype, shape, values = tensors[output.name]
    if not output.classification:
        return output.name, datatype, shape, values
    if datatype != "FP32":
        raise BadRequest(f"classification applies to a probability output, not {output.name!r}")
    rows, classes = shape
    k = min(output.classification, classes)
    labelled = []
    for row in range(rows):
        scores = values[row * classes : (row + 1) * classes]
        for index in sorted(range(classes), key=lambda i: -scores[i])[:k]:
            labelled.append(f"{scores[index]}:{index}")
    return output.name, "BYTES", [rows, k], labelled


def _binary(datatype: str, values: list) -> bytes:
    if datatype == "FP32":
        return struct.pack(f"<{len(values)}f", *values)
    encoded = [str(v).encode() for v in values]
    return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
