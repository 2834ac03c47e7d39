"""The HTTP layer's parts without a cluster: image decoding, request bodies, auth, the config file."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mosaserve.adapters.images import BadImageError, ImageTooLargeError, decode_image
from mosaserve.deploy.config import ServeConfig, ServeConfigError, ServeFile, read_serve_file
from mosaserve.deploy.http.errors import RequestError, require_admin, status_of
from mosaserve.deploy.http.requests import images_from_body, read_limited

SERVE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "serve_config.yaml"


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "1", "I;16"])
def test_every_png_mode_becomes_8bit_rgb(mode):
    pixels = (np.arange(35).reshape(5, 7) * 1800).astype(np.uint16)
    image = Image.fromarray(pixels) if mode == "I;16" else Image.new(mode, (7, 5))
    decoded = decode_image(encode(image))
    assert decoded.shape == (3, 5, 7) and str(decoded.dtype) == "torch.uint8"
    if mode == "I;16":  # 16-bit grey keeps its top 8 bits instead of clipping at 255
        assert (decoded[0].numpy() == pixels >> 8).all()


def test_cmyk_jpeg_and_rgba_decode_to_rgb():
    cmyk = decode_image(encode(Image.new("CMYK", (4, 3), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.shape == (3, 3, 4) and cmyk[0].float().mean() > 200 and cmyk[1].float().mean() < 60  # red
    rgba = decode_image(encode(Image.new("RGBA", (2, 2), (10, 20, 30, 0))))
    assert rgba[:, 0, 0].tolist() == [10, 20, 30]  # alpha dropped, colour kept


def test_bad_images_are_refused_with_reasons():
    with pytest.raises(BadImageError, match="empty"):
        decode_image(b"")
    with pytest.raises(BadImageError, match="cannot decode"):
        decode_image(b"GIF89a not really")
    with pytest.raises(BadImageError, match="unsupported image format GIF"):
        decode_image(encode(Image.new("RGB", (2, 2)), "GIF"))
    with pytest.raises(BadImageError):
        decode_image(encode(Image.new("RGB", (50, 50)))[:60])  # truncated
    bomb = encode(Image.new("1", (20000, 20000)))
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLargeError, match="400000000 pixels"):
        decode_image(bomb, max_pixels=25_000_000)


async def _chunks(*parts: bytes):
    for part in parts:
        yield part


def test_bodies_are_read_within_limits():
    assert asyncio.run(read_limited(_chunks(b"ab", b"cd"), None, 4, "body")) == b"abcd"
    with pytest.raises(RequestError) as declared:
        asyncio.run(read_limited(_chunks(b"ab"), "999", 4, "body"))
    with pytest.raises(RequestError) as streamed:
        asyncio.run(read_limited(_chunks(b"abc", b"de"), None, 4, "body"))  # a lying or absent length
    assert status_of(declared.value) == status_of(streamed.value) == 413


def test_declared_lengths_that_are_not_ascii_digits_are_left_to_the_streamed_check():
    # "²".isdigit() is true, but int("²") raises: it must not escape as a server error.
    assert asyncio.run(read_limited(_chunks(b"ab"), "\u00b2", 4, "body")) == b"ab"
    with pytest.raises(RequestError) as caught:
        asyncio.run(read_limited(_chunks(b"abcde"), "\u00b2", 4, "body"))
    assert status_of(caught.value) == 413


def test_json_nested_deeper_than_the_parser_recurses_is_a_400():
    for body in (b"[" * 100_000, b'{"a":' * 50_000):
        with pytest.raises(RequestError) as caught:
            images_from_body(body, "application/json", 4)
        assert status_of(caught.value) == 400 and "nested too deeply" in str(caught.value)


def test_images_come_raw_or_as_base64_json():
    png = encode(Image.new("RGB", (2, 2)))
    b64 = base64.b64encode(png).decode()
    assert images_from_body(png, "image/png", 4) == [png]
    assert images_from_body(f'{{"image": "{b64}"}}'.encode(), "application/json; charset=utf-8", 4) == [png]
    assert images_from_body(f'{{"images": ["{b64}", "{b64}"]}}'.encode(), "application/json", 4) == [png, png]
    data_url = f"data:image/png;base64,{b64}"  # what a browser's FileReader.readAsDataURL gives
    assert images_from_body(f'{{"image": "{data_url}"}}'.encode(), "application/json", 4) == [png]
    for bad, status in ((b"", 400), (b"{", 400), (b"[]", 400), (b'{"image": 3}', 400), (b'{"images": []}', 400),
                        (b'{"image": "a", "images": ["a"]}', 400), (b'{"image": "%%%"}', 400),
                        (f'{{"image": "data:image/png,{b64}"}}'.encode(), 400),
                        (b'{"image": "data:image/png;base64,%%%"}', 400),
                        (f'{{"images": ["{b64}"] }}'.replace(f'"{b64}"', ", ".join([f'"{b64}"'] * 5)).encode(), 413)):
        with pytest.raises(RequestError) as caught:
            images_from_body(bad, "application/json", 4)
        assert status_of(caught.value) == status, bad


def test_admin_token_is_required_and_compared_exactly():
    require_admin("Bearer s3cret", "s3cret")
    require_admin("bearer s3cret", "s3cret")
    for header in (None, "", "Bearer", "Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret"):
        with pytest.raises(RequestError) as caught:
            require_admin(header, "s3cret")
        assert status_of(caught.value) == 401
    with pytest.raises(RequestError) as disabled:
        require_admin("Bearer anything", None)
    assert status_of(disabled.value) == 403


def test_the_shipped_serve_config_builds_the_application():
    from mosaserve.deploy.app import build_app

    from mosaserve.adapters.embedded import EMBEDDED_BACKBONE

    file = read_serve_file(SERVE_CONFIG)
    assert (file.host, file.port) == ("127.0.0.1", 8000)
    assert file.settings.runtime.backbone == EMBEDDED_BACKBONE == ServeConfig().runtime.backbone  # the embedded default
    assert file.settings.runtime.backbone.kwargs["img_size"] == 28 and file.settings.serving.replicas == 1
    assert (file.settings.board.admin_port, file.settings.board.admin_host) == (8001, "127.0.0.1")  # uploads off the serving path
    app = build_app(file.settings)
    assert type(app).__name__ == "Application"


def test_the_default_bind_address_is_loopback(tmp_path):
    from mosaserve.cli import build_parser

    assert build_parser().parse_args(["serve"]).host is None  # so the config decides...
    assert ServeFile(ServeConfig()).host == "127.0.0.1"  # ...and without --config that is loopback
    bare = tmp_path / "bare.yaml"
    bare.write_text("applications: [{name: mosaserve, import_path: mosaserve.deploy.app:build_app}]\n")
    assert read_serve_file(bare).host == "127.0.0.1"  # a config without http_options too


def test_decoded_pixels_in_flight_are_taken_up_to_the_limit_and_given_back():
    from mosaserve.deploy.http.requests import PixelsInFlight
    from mosaserve.runtime.errors import ServiceBusyError

    budget = PixelsInFlight(100)
    budget.take(60)
    budget.take(40)  # exactly the limit
    with pytest.raises(ServiceBusyError) as refused:
        budget.take(1)
    assert status_of(refused.value) == 503 and refused.value.retry_after_s == 1 and budget.held == 100
    budget.give_back(60)
    budget.take(50)
    assert budget.held == 90


def test_a_change_no_live_replica_serves_is_not_called_servable_everywhere():
    import json

    from mosaserve.deploy.http.admin import answer_change
    from mosaserve.deploy.messages import ChangeReply

    served = answer_change(ChangeReply(created=True, generation=7, task={"version": 1}, replicas=("r1", "r2")), 0.0, {})
    assert served.status_code == 201 and json.loads(served.body)["servable_everywhere"] is True
    replaced = answer_change(ChangeReply(generation=8, task={"version": 2}, replicas=("r1",)), 0.0, {})
    assert replaced.status_code == 200
    # Every replica forgotten (dead or restarting) after the board learnt the backbone: stored, served by none.
    nobody = answer_change(ChangeReply(created=True, generation=7, task={"version": 1}), 0.0, {})
    assert nobody.status_code == 202 and json.loads(nobody.body)["servable_everywhere"] is False
    assert json.loads(nobody.body)["replicas"] == 0


def test_admin_token_comes_from_config_or_environment(monkeypatch):
    monkeypatch.delenv("MOSASERVE_ADMIN_TOKEN", raising=False)
    assert ServeConfig().resolved_admin_token() is None
    monkeypatch.setenv("MOSASERVE_ADMIN_TOKEN", "from-env")
    assert ServeConfig().resolved_admin_token() == "from-env"
    assert ServeConfig.of(admin_token="from-config").resolved_admin_token() == "from-config"
    monkeypatch.setenv("MOSASERVE_ADMIN_TOKEN", "naïve")
    with pytest.raises(ServeConfigError, match="MOSASERVE_ADMIN_TOKEN must be a non-empty string of ASCII"):
        ServeConfig().resolved_admin_token()


def test_config_refuses_typos_and_bad_values(tmp_path):
    with pytest.raises(ServeConfigError, match="unknown mosaserve settings"):
        ServeConfig.from_dict({"replica": 2})
    with pytest.raises(ServeConfigError, match="max_batch_size must be positive"):
        ServeConfig.from_dict({"max_batch_size": 0})
    with pytest.raises(ServeConfigError, match="backbone"):
        ServeConfig.from_dict({"backbone": {"name": "vit", "weights": "x"}})
    for nice in (-1, 20, 2.5):  # lowering the board below serving's priority would need privileges; 19 is the floor
        with pytest.raises(ServeConfigError, match="board_nice must be an integer from 0 to 19"):
            ServeConfig.from_dict({"board_nice": nice})
    for port in (-1, 65536, "8001", True, 1.5):
        with pytest.raises(ServeConfigError, match="admin_port must be a port number"):
            ServeConfig.from_dict({"admin_port": port})
    with pytest.raises(ServeConfigError, match="sync_coalesce_s must not be negative"):
        ServeConfig.from_dict({"sync_coalesce_s": -0.1})
    assert ServeConfig.of(sync_coalesce_s=0).board.sync_coalesce_s == 0  # one store pass per change
    with pytest.raises(ServeConfigError, match="admin_host must be"):
        ServeConfig.from_dict({"admin_host": " "})
    # A token an Authorization header cannot carry as written would fail or lock out every admin request.
    for token in (12345678, "", "pässword", " padded "):
        with pytest.raises(ServeConfigError, match="admin_token must be a non-empty string of ASCII"):
            ServeConfig.from_dict({"admin_token": token})
    with pytest.raises(ServeConfigError, match="max_pixels_in_flight \\(10\\) must be at least max_request_pixels"):
        ServeConfig.from_dict({"max_pixels_in_flight": 10})
    with pytest.raises(ServeConfigError, match="default_top_k must be at most 1000"):
        ServeConfig.from_dict({"default_top_k": 1001})  # else every request without ?top_k would get a 400
    assert ServeConfig().board.admin_port is None and ServeConfig.of(admin_port=0).board.admin_port == 0
    # Caught when the config is read, not when a replica builds its first batch.
    for bad, message in [({"dtype": "int8"}, "dtype must be one of"), ({"dtype": "float"}, "dtype must be one of"),
                         ({"device": "gpu0"}, "unknown device 'gpu0'"), ({"strategy": "fastest"}, "strategy must be one of")]:
        with pytest.raises(ServeConfigError, match=message):
            ServeConfig.from_dict(bad)
    on_gpu = ServeConfig.from_dict({"device": "cuda:1", "dtype": "bfloat16"})
    assert on_gpu.runtime.device == "cuda:1" and on_gpu.replica_num_gpus == 1
    assert ServeConfig().replica_num_gpus == 0
    custom = ServeConfig.from_dict({"backbone": {"name": "vit_base_patch16_224", "checkpoint": "/models/b16.safetensors"}})
    assert custom.runtime.backbone.checkpoint == "/models/b16.safetensors" and custom.runtime.backbone.kwargs == {}
    two_apps = tmp_path / "two.yaml"
    two_apps.write_text("applications: [{name: a}, {name: b}]\n")
    with pytest.raises(ServeConfigError, match="exactly one application"):
        read_serve_file(two_apps)


def test_an_admin_port_in_use_fails_the_board_s_start_with_a_clear_error():
    from mosaserve.deploy.http.admin import listen

    taken = listen("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on its admin port 127.0.0.1:{port}"):
            listen("127.0.0.1", port)
    finally:
        taken.close()
    again = listen("127.0.0.1", port)  # free again: a restarted board takes its port back at once
    again.close()


def test_freezing_the_startup_heap_frees_its_garbage_first_and_hides_the_rest_from_the_collector():
    import gc
    import weakref

    from mosaserve.deploy.process import freeze_startup_heap

    class Node:
        pass

    cycle = Node()
    cycle.self = cycle  # garbage only a collection frees
    gone = weakref.ref(cycle)
    del cycle
    kept = [Node() for _ in range(1000)]
    before = gc.get_freeze_count()
    freeze_startup_heap()
    try:
        assert gone() is None  # collected, not frozen for good
        assert gc.get_freeze_count() >= before + len(kept)  # out of every later full collection's walk
    finally:
        gc.unfreeze()  # this test process goes on as before


def test_a_heap_frozen_for_a_measurement_is_released_after_it_unless_the_process_froze_it_itself():
    import gc
    import weakref

    from mosaserve.deploy.process import heap_frozen

    class Node:
        pass

    cycle = Node()
    cycle.self = cycle
    dropped = weakref.ref(cycle)
    del cycle  # garbage from before the measurement
    with heap_frozen():
        gc.collect()
        assert dropped() is not None  # out of sight: no collection during the measurement walks it
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert dropped() is None  # the first collection after frees it
    gc.freeze()  # a process that froze its start-up heap, as replicas do
    try:
        with heap_frozen():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_the_readme_config_table_is_the_one_generated_from_the_settings_help():
    from mosaserve.deploy.config import GROUPS, config_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert config_table() in readme
    assert all(f.metadata.get("help") for kind in GROUPS.values() for f in kind.__dataclass_fields__.values())


def test_settings_come_grouped_or_by_their_own_names_and_land_in_their_group():
    flat = ServeConfig.from_dict({"replicas": 2, "admin_port": 0, "dtype": "bfloat16"})
    grouped = ServeConfig.from_dict({"serving": {"replicas": 2}, "board": {"admin_port": 0}, "runtime": {"dtype": "bfloat16"}})
    assert flat == grouped and flat.serving.replicas == 2 and flat.board.admin_port == 0
    assert flat.runtime.dtype == "bfloat16" and flat.limits == ServeConfig().limits
    with pytest.raises(ServeConfigError, match="serving must be a mapping"):
        ServeConfig.from_dict({"serving": 2})


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_a_thread_that_trains_beside_serving_and_the_threads_it_starts_run_only_on_idle_cpu():
    from mosaserve.deploy.process import yield_to_serving

    policies = {}

    def child() -> None:
        policies["started later"] = os.sched_getscheduler(0)

    def trainer() -> None:
        yield_to_serving()
        policies["trainer"] = os.sched_getscheduler(0)
        started = threading.Thread(target=child)
        started.start()
        started.join()

    thread = threading.Thread(target=trainer)
    thread.start()
    thread.join()
    assert policies == {"trainer": os.SCHED_IDLE, "started later": os.SCHED_IDLE}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the thread that asked for nothing keeps its priority


def test_the_client_asks_again_after_a_busy_refusal_and_gives_up_on_other_errors():
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from mosaserve.client import Client, InvalidAdapterError

    answers = [(503, {"Retry-After": "1"}, b'{"error": "busy"}'), (200, {}, b'{"task": {"version": 1}}'),
               (422, {}, b'{"error": "not an adapter"}')]
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self):
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            status, headers, body = answers.pop(0)
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        client = Client(url, token="token")
        assert client.register("t", b"file") == {"task": {"version": 1}}
        assert received == [b"file", b"file"]  # the same file, asked again after Retry-After
        with pytest.raises(InvalidAdapterError, match="not an adapter") as refused:
            client.register("t", b"file")
        assert refused.value.status == 422
        assert len(received) == 3  # a refusal that is not "busy" is final
    finally:
        server.shutdown()
        server.server_close()
