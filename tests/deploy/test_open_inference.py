"""The Open Inference Protocol's bodies, read and written, against Triton's own client encoder and decoder."""

from __future__ import annotations

import base64
import struct

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.http._utils import _get_inference_request

from mosaserve.deploy.http.errors import BadRequest, TooLarge
from mosaserve.deploy.http.open_inference import infer_response, model_metadata, parse_infer_request
from mosaserve.runtime.answers import Answer

IMAGES = [b"\x89PNG first", b"\xff\xd8 second, longer"]


def triton_request(images: list[bytes], binary: bool, outputs=None, **kwargs) -> tuple[bytes, str | None]:
    """The body and header length Triton's HTTP client sends for these encoded images."""
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    values = images if binary else [base64.b64encode(i) for i in images]
    tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
    body, json_size = _get_inference_request([tensor], outputs=outputs, request_id=kwargs.get("request_id", ""),
                                             sequence_id=0, sequence_start=False, sequence_end=False, priority=0,
                                             timeout=None, custom_parameters=kwargs.get("parameters"))
    return (body.encode() if isinstance(body, str) else body), (None if json_size is None else str(json_size))


@pytest.mark.parametrize("binary", [False, True])
def test_images_sent_by_triton_s_client_are_read_back_byte_for_byte(binary):
    outputs = [triton.InferRequestedOutput("labels", binary_data=binary),
               triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)]
    body, header_length = triton_request(IMAGES, binary, outputs, request_id="r7", parameters={"top_k": 3})
    request = parse_infer_request(body, header_length, max_images=4)
    assert request.images == IMAGES and request.request_id == "r7" and request.top_k == 3
    assert [(o.name, o.binary, o.classification) for o in request.outputs] == [("labels", binary, 0),
                                                                               ("probabilities", binary, 2)]


ANSWERS = [Answer("t", 3, (("b", 0.7), ("a", 0.2)), probabilities=(0.2, 0.7, 0.1)),
           Answer("t", 3, (("c", 0.5), ("b", 0.3)), probabilities=(0.2, 0.3, 0.5))]


@pytest.mark.parametrize("binary", [False, True])
def test_answers_are_decoded_by_triton_s_client_as_the_tensors_they_are(binary):
    body, header_length = triton_request(IMAGES, binary, [triton.InferRequestedOutput(name, binary_data=binary)
                                                          for name in ("probabilities", "labels")], request_id="r1")
    response, response_header_length = infer_response("t", parse_infer_request(body, header_length, 4), ANSWERS)
    assert (response_header_length is not None) == binary
    result = triton.InferResult.from_response_body(response, header_length=response_header_length)
    assert result.get_response()["model_name"] == "t" and result.get_response()["model_version"] == "3"
    assert result.get_response()["id"] == "r1"
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 3)
    assert np.allclose(probabilities, [[0.2, 0.7, 0.1], [0.2, 0.3, 0.5]])
    labels = result.as_numpy("labels")
    assert labels.shape == (2, 2) and [[str(x, "utf-8") if isinstance(x, bytes) else x for x in row]
                                       for row in labels.tolist()] == [["b", "a"], ["c", "b"]]


def test_no_outputs_named_answers_every_output_and_classification_ranks_indices():
    body, header_length = triton_request(IMAGES, binary=True)  # Triton's client then asks for binary outputs
    response, length = infer_response("t", parse_infer_request(body, header_length, 4), ANSWERS)
    result = triton.InferResult.from_response_body(response, header_length=length)
    assert result.as_numpy("probabilities").shape == (2, 3) and result.as_numpy("labels").shape == (2, 2)
    ranked = triton_request(IMAGES, True, [triton.InferRequestedOutput("probabilities", class_count=2)])
    response, length = infer_response("t", parse_infer_request(*ranked, 4), ANSWERS)
    top = triton.InferResult.from_response_body(response, header_length=length).as_numpy("probabilities")
    assert [[x.decode().split(":")[1] for x in row] for row in top] == [["1", "0"], ["2", "1"]]


def test_the_bare_backbone_is_a_model_with_an_embedding_output():
    metadata = model_metadata({"task_id": "__backbone__", "version": None, "output": "embedding", "embedding_dim": 8})
    assert metadata["versions"] == [] and metadata["outputs"] == [{"name": "embedding", "datatype": "FP32",
                                                                   "shape": [-1, 8]}]
    body, header_length = triton_request(IMAGES[:1], binary=True)
    answer = Answer("__backbone__", None, (), embedding=(0.5,) * 8)
    response, length = infer_response("__backbone__", parse_infer_request(body, header_length, 4), [answer])
    result = triton.InferResult.from_response_body(response, header_length=length)
    assert result.as_numpy("embedding").shape == (1, 8) and result.get_response()["model_version"] == ""


def tensor_body(**image_input) -> bytes:
    import json

    return json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="],
                                   **image_input}]}).encode()


@pytest.mark.parametrize("body, header_length, error, says", [
    (b"[1, 2]", None, BadRequest, "JSON object"),
    (b'{"inputs": []}', None, BadRequest, "exactly one input"),
    (tensor_body(name="pixels"), None, BadRequest, "unknown input 'pixels'"),
    (tensor_body(datatype="FP32"), None, BadRequest, "of type 'FP32'"),
    (tensor_body(shape=[2]), None, BadRequest, "holds 1 images"),
    (tensor_body(shape=[0], data=[]), None, BadRequest, "at least one"),
    (tensor_body(shape=["1"]), None, BadRequest, "non-negative integers"),
    (tensor_body(shape=[5], data=["aGk="] * 5), None, TooLarge, "the limit is 4"),
    (tensor_body(data=["not base64!"]), None, BadRequest, "not valid base64"),
    (tensor_body(data=[7]), None, BadRequest, "base64 string"),
    (tensor_body(data="aGk="), None, BadRequest, "a list of base64 strings"),
    (tensor_body(parameters={"binary_data_size": 9}) + struct.pack("<I", 5) + b"abcde", None, BadRequest,
     "malformed JSON"),  # binary data without the header length
    (tensor_body(parameters={"binary_data_size": 9}) + struct.pack("<I", 50) + b"abcde", "-1", BadRequest,
     "Inference-Header-Content-Length"),
])
def test_malformed_requests_are_refused_with_what_is_wrong(body, header_length, error, says):
    with pytest.raises(error, match=says):
        parse_infer_request(body, header_length, max_images=4)


def test_binary_elements_that_run_past_their_data_are_refused():
    head = tensor_body(parameters={"binary_data_size": 9})
    for tail, says in ((struct.pack("<I", 50) + b"abcde", "runs past"), (struct.pack("<I", 1) + b"a" + struct.pack("<I", 0), "holds 2"),
                       (b"abc", "declares 9")):
        with pytest.raises(BadRequest, match=says):
            parse_infer_request(head + tail, str(len(head)), max_images=4)


def test_unknown_outputs_are_refused_naming_the_model_s_outputs():
    body, header_length = triton_request(IMAGES, False, [triton.InferRequestedOutput("logits")])
    with pytest.raises(BadRequest, match=r"unknown output 'logits'; this model has \['labels', 'probabilities'\]"):
        infer_response("t", parse_infer_request(body, header_length, 4), ANSWERS)
