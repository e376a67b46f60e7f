"""Start the project's servers as real processes on free loopback ports, and always stop them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A child process serving HTTP on 127.0.0.1:port; `stop()` (or the context exit) ends it."""

    def __init__(self, args: list[str], port: int, log: Path, ready_path: str = "/v1/models", env: dict | None = None):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._log_file = open(log, "wb")
        self.process = subprocess.Popen(
            args, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self._wait_ready(ready_path)

    def _wait_ready(self, path: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                urllib.request.urlopen(self.url + path, timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # it answers, even if with an error status
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log.read_text()}")

    def get_json(self, path: str) -> tuple[int, dict]:
        """GET `path`; returns (status, parsed JSON body), error statuses included."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def get_text(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return response.read().decode()

    def kill(self) -> None:
        """Kill the whole process group at once, as a crash would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log_file.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def cli_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "expert_router", *args]


def synthetic_expert(tmp: Path, name: str, *flags: str, models: list[str] | None = None) -> Server:
    port = free_port()
    models = models or [f"expert-{c}" for c in range(8)]
    return Server(cli_args("synthetic-expert", "--port", str(port), "--models", *models, *flags), port,
                  tmp / f"{name}.log")


def gateway(tmp: Path, deployment: Path, *flags: str, name: str = "gateway") -> Server:
    port = free_port()
    return Server(cli_args("serve", str(deployment), "--port", str(port), *flags), port, tmp / f"{name}.log")


def write_deployment(path: Path, classifier: Path, endpoints: dict[int, list[str]], **gateway_settings) -> Path:
    import yaml

    document = {
        "classifier": str(classifier),
        "experts": [{"cluster": c, "model": f"expert-{c}", "endpoints": urls} for c, urls in sorted(endpoints.items())],
        "gateway": {"health_interval_s": 0.2, **gateway_settings},
    }
    path.write_text(yaml.safe_dump(document))
    return path


REPO = Path(__file__).resolve().parents[2]


class Nginx:
    """nginx with the project's deploy/nginx.conf, pointed at the given gateways, in a scratch folder."""

    def __init__(self, tmp: Path, upstreams: list[str]):
        import re
        import shutil

        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.prefix = tmp / "nginx"
        self.prefix.mkdir(parents=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = (REPO / "deploy" / "nginx.conf").read_text()
        servers = "".join(f"        server {u.removeprefix('http://')};\n" for u in upstreams)
        config = re.sub(r"(        server 127\.0\.0\.1:\d+;\n)+", servers, config)
        config = config.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{self.port};")
        config = config.replace("worker_processes auto;", "worker_processes 1;")
        (self.prefix / "nginx.conf").write_text(config)
        self.process = subprocess.Popen(
            [binary, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=open(self.prefix / "stderr.log", "wb"),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("nginx exited: " + (self.prefix / "stderr.log").read_text()
                                   + (self.prefix / "error.log").read_text())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "Nginx":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
