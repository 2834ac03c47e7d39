"""The README's main command, end to end at a tiny size: train, write files, inspect them."""

import json
import subprocess
import sys

from mosaserve.adapters.file_format import load_adapter


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mosaserve.cli", *args], capture_output=True, text=True, timeout=300)


def test_train_writes_loadable_adapters_and_inspect_reads_them(tmp_path):
    out = tmp_path / "demo"
    done = run_cli("train", "--epochs", "1", "--train-size", "64", "--test-size", "64", "--out", str(out), "--no-progress")
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
