"""A real Prometheus server for tests: installed from Debian where missing, loopback only, data in a temp folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

INSTALL = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]


def prometheus_binary() -> str:
    """The prometheus binary, installed with apt-get when missing (CI runs as root on Debian 12).

    Where it cannot be had, CI fails (a dashboard test must not vanish from CI unnoticed); elsewhere it skips.
    """
    found = shutil.which("prometheus") or _apt_install()
    if found:
        return found
    message = ("the Prometheus server is needed and could not be installed: run "
               "`apt-get install prometheus` as root (Debian/Ubuntu) or put a `prometheus` binary on PATH")
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _apt_install() -> str | None:
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in ([INSTALL], [["apt-get", "update"], INSTALL]):  # the package lists may be stale or absent
        if all(subprocess.run(command, env=env, capture_output=True, timeout=600).returncode == 0 for command in attempt):
            break
    return shutil.which("prometheus")


def scrape_config(template: Path, target_url: str, interval: str) -> dict:
    """The shipped config, pointed at `target_url` (http://host:port) and scraping every `interval`."""
    config = yaml.safe_load(template.read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = interval
    job = config["scrape_configs"][0]
    job["static_configs"] = [{"targets": [target_url.split("://", 1)[1].rstrip("/")]}]
    return config


class PrometheusServer:
    """One Prometheus process on 127.0.0.1:`port`; stop() ends it (terminate, then kill if it hangs)."""

    def __init__(self, binary: str, config: dict, workdir: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config_file}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready after {timeout_s}s:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout_s: float = 10.0) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
