"""The README's main command, end to end at a tiny size: train, write files, inspect them."""

import json
import subprocess
import sys

import pytest
import torch

from mosaserve.adapters.file_format import load_adapter


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mosaserve.cli", *args], capture_output=True, text=True, timeout=300)


def test_train_writes_loadable_adapters_and_inspect_reads_them(tmp_path):
    out = tmp_path / "demo"
    # At full priority: an idle-priority trainer would wait on whatever else holds the cores.
    done = run_cli("train", "--epochs", "1", "--train-size", "64", "--test-size", "64", "--out", str(out), "--no-progress",
                   "--full-priority")
    assert done.returncode == 0, done.stderr
    assert "adapter" in done.stdout and "mosa" in done.stdout and "test acc" in done.stdout
    files = sorted(p.name for p in out.iterdir())
    assert files == ["backbone.safetensors", "mnist-adapter.safetensors", "mnist-mosa.safetensors"]
    mosa = load_adapter(out / "mnist-mosa.safetensors")
    assert mosa.header.adapter.method == "mosa" and mosa.header.labels == tuple("0123456789")
    shown = run_cli("inspect", str(out / "mnist-mosa.safetensors"))
    assert shown.returncode == 0 and json.loads(shown.stdout)["adapter"]["num_experts"] == 4


def test_inspect_rejects_a_bad_file_with_a_clear_message(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 4)
    done = run_cli("inspect", str(bad))
    assert done.returncode == 2 and "invalid adapter file" in done.stderr


def test_train_register_reports_a_missing_token_and_an_unreachable_service(tmp_path):
    args = ("train", "--epochs", "1", "--train-size", "32", "--test-size", "16", "--methods", "linear",
            "--out", str(tmp_path), "--no-progress", "--register", "http://127.0.0.1:9")
    env_without_token = {k: v for k, v in __import__("os").environ.items() if k != "MOSASERVE_ADMIN_TOKEN"}
    no_token = subprocess.run([sys.executable, "-m", "mosaserve.cli", *args], capture_output=True, text=True,
                              timeout=300, env=env_without_token)
    assert no_token.returncode == 2 and "--token" in no_token.stderr
    unreachable = run_cli(*args, "--token", "t")
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
    assert (tmp_path / "mnist-linear.safetensors").exists()  # the trained file is kept either way


@pytest.mark.parametrize("extra, message", [
    (("--methods", "adapter,mosa", "--task-id", "digits"), "--task-id names one task"),
    (("--methods", "adapter,dora"), "unknown method(s) dora"),
    (("--methods", "adapter", "--task-id", "../etc"), "--task-id: invalid task id"),
    (("--methods", "adapter", "--head", "pixels"), "unknown head pixels: choose from tokens, tokens_mid, pooled"),
    (("--methods", "adapter", "--max-scale", "1.5"), "max_rotation must lie in [0, 180] degrees and max_scale in [0, 1)"),
])
def test_train_refuses_bad_arguments_before_training_anything(tmp_path, extra, message):
    refused = run_cli("train", "--epochs", "1", "--train-size", "32", "--test-size", "16", "--out", str(tmp_path),
                      "--no-progress", "--register", "http://127.0.0.1:9", "--token", "t", *extra)
    assert refused.returncode == 2 and message in refused.stderr
    assert not list(tmp_path.iterdir())  # nothing was trained


def test_results_refuses_an_unknown_head_before_loading_anything(tmp_path):
    refused = run_cli("results", "--head", "pixels", "--out", str(tmp_path / "q.json"))
    assert refused.returncode == 2 and "unknown head pixels: choose from tokens" in refused.stderr
    assert not (tmp_path / "q.json").exists()


def test_bench_runtime_writes_every_scenario_as_a_ratio_to_the_backbone(tmp_path):
    out = tmp_path / "bench.json"
    done = run_cli("bench", "runtime", "--models", "vit_tiny_patch16_224", "--batch", "2", "--tasks", "2", "--r", "4",
                   "--repeats", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = {row["scenario"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["backbone only"]["ratio_to_backbone"] == 1.0
    executor_rows = ["bare rows through the executor", "1 task (MoSA) [grouped]", "1 task (MoSA) [gathered]",
                     "all rows distinct [grouped]", "all rows distinct [gathered]", "2 LoRA tasks [grouped]",
                     "all rows distinct, half with middle-block heads [gathered]"]
    baselines = ["baseline: swap weights per request (2 tasks)", "baseline: one model per task (2 tasks)"]
    for label in executor_rows + baselines:
        row = rows[label]
        assert row["images_per_s"] > 0 and row["ratio_low"] <= row["ratio_to_backbone"] <= row["ratio_high"]
        assert 0 < row["adapter_time_share"] < 1 if label in executor_rows else row["adapter_time_share"] != row["adapter_time_share"]
        if label in executor_rows[1:]:  # every task row has a head, timed inside the adapters' share
            assert 0 < row["head_time_share"] < row["adapter_time_share"]
    # Two full copies of the 5.7M-parameter ViT, in float32.
    assert rows["baseline: one model per task (2 tasks)"]["weights_bytes"] > 2 * 5_000_000 * 4
    assert "| all rows distinct [gathered] |" in done.stdout  # the readable table


def test_bench_runtime_in_bfloat16_and_on_a_device_it_cannot_use(tmp_path):
    out = tmp_path / "bf16.json"
    done = run_cli("bench", "runtime", "--models", "vit_tiny_patch16_224", "--batch", "2", "--tasks", "2", "--r", "4",
                   "--repeats", "1", "--dtype", "bfloat16", "--out", str(out))
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert (doc["meta"]["device"], doc["meta"]["dtype"]) == ("cpu", "bfloat16")
    rows = {row["scenario"]: row for row in doc["rows"]}
    assert rows["all rows distinct [gathered]"]["images_per_s"] > 0
    # The baseline's two model copies are in bfloat16 too: 2 bytes per parameter, not 4.
    assert 2 * 5_000_000 * 2 < rows["baseline: one model per task (2 tasks)"]["weights_bytes"] < 2 * 6_000_000 * 2
    unknown = run_cli("bench", "runtime", "--device", "toaster", "--out", str(tmp_path / "x.json"))
    assert unknown.returncode == 2 and "unknown device 'toaster'" in unknown.stderr
    integer = run_cli("bench", "runtime", "--dtype", "int8", "--out", str(tmp_path / "z.json"))
    assert integer.returncode == 2 and "dtype must be one of ('float32', 'bfloat16', 'float16')" in integer.stderr
    if not torch.cuda.is_available():
        absent = run_cli("bench", "runtime", "--device", "cuda", "--out", str(tmp_path / "y.json"))
        assert absent.returncode == 2 and "sees no CUDA device" in absent.stderr


def test_loadtest_compare_refuses_a_precision_or_device_it_cannot_run_before_starting_anything(tmp_path):
    integer = run_cli("loadtest", "compare", "--dtype", "int8", "--out", str(tmp_path / "a"))
    assert integer.returncode == 2 and "invalid choice: 'int8'" in integer.stderr
    unknown = run_cli("loadtest", "compare", "--device", "toaster", "--out", str(tmp_path / "b"))
    assert unknown.returncode == 2 and "unknown device 'toaster'" in unknown.stderr
    if not torch.cuda.is_available():
        absent = run_cli("loadtest", "compare", "--device", "cuda", "--dtype", "bfloat16", "--out", str(tmp_path / "c"))
        assert absent.returncode == 2 and "sees no CUDA device" in absent.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
