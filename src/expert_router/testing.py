"""Test support that ships with the package: real servers on free loopback ports, always stopped.

Used by the tests and the benchmarks alike (starlette's `testclient` and httpx's `MockTransport` do
the same): a `Server` is a child process in its own process group, waited for with the library's one
ready-wait and stopped with its one process stop; `Nginx` runs the project's `deploy/nginx.conf`,
`RedisServer` a scratch Redis.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Self

from expert_router.emulate import scale_times
from expert_router.experiment_file import Configuration, Service
from expert_router.loadgen.records import RequestRecord, read_records
from expert_router.loadgen.workload import WorkItem, save_workload
from expert_router.processes import http_ok, stop_groups, wait_until
from expert_router.simulate.run import Cell, simulate_cell
from expert_router.simulate.system import GatewayOverhead
from expert_router.simulate.users import Load

REPO = Path(__file__).resolve().parents[2]
"""The source checkout (the package is installed editable from `src/`)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def consecutive_free_ports(n: int) -> int:
    """A first port p such that p .. p+n-1 are all free now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65535:
            continue
        try:
            sockets = []
            for port in range(base, base + n):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no run of free ports")


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def cli_args(*args: str) -> list[str]:
    """`expert-router ARGS...` run by this interpreter, so a test uses the installation it imports."""
    return [sys.executable, "-m", "expert_router", *args]


class Server:
    """A child process serving HTTP on 127.0.0.1:port; `stop()` (or the context exit) ends it."""

    def __init__(
        self,
        args: list[str],
        port: int,
        log: Path,
        ready_path: str = "/v1/models",
        env: dict[str, str] | None = None,
        timeout_s: float = 60.0,
    ):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._log_file = open(log, "wb")
        self.process = subprocess.Popen(
            args,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        try:
            wait_until(
                lambda: http_ok(self.url + ready_path, 1.0, any_status=True),
                f"server {args[3:5]}",
                timeout_s,
                self.process,
                log,
            )
        except BaseException:
            self.stop()
            raise

    def get_json(self, path: str) -> tuple[int, Any]:
        """GET `path`; returns (status, parsed JSON body), error statuses included."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def get_text(self, path: str) -> str:
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            text: str = response.read().decode()
            return text

    def kill(self) -> None:
        """Kill the whole process group at once, as a crash would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        stop_groups([self.process], grace_s=10.0)
        self._log_file.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def synthetic_expert(tmp: Path, name: str, *flags: str, models: list[str] | None = None) -> Server:
    """`expert-router synthetic-expert` serving `expert-0..7` (or `models`) on a free port."""
    port = free_port()
    models = models or [f"expert-{c}" for c in range(8)]
    return Server(
        cli_args("synthetic-expert", "--port", str(port), "--models", *models, *flags), port, tmp / f"{name}.log"
    )


def gateway(tmp: Path, deployment: Path, *flags: str, name: str = "gateway") -> Server:
    """`expert-router serve DEPLOYMENT` on a free port."""
    port = free_port()
    return Server(cli_args("serve", str(deployment), "--port", str(port), *flags), port, tmp / f"{name}.log")


def write_deployment(path: Path, classifier: Path, endpoints: dict[int, list[str]], **gateway_settings: Any) -> Path:
    """A deployment file routing cluster c to model `expert-c` at `endpoints[c]`, health checks every 0.2 s."""
    from expert_router.config import Deployment, ExpertConfig, GatewaySettings

    deployment = Deployment(
        classifier=classifier,
        experts=[
            ExpertConfig(cluster=c, model=f"expert-{c}", endpoints=urls)  # pydantic parses the str URLs
            for c, urls in sorted(endpoints.items())
        ],
        gateway=GatewaySettings(**{"health_interval_s": 0.2, **gateway_settings}),
    )
    return deployment.write(path)


class _Daemon:
    """A program other than ours that serves a TCP port (nginx, Redis): started in its own process group,
    output to a log, ready once the port accepts, stopped with the group."""

    port: int
    process: subprocess.Popen[bytes]

    def _start(self, args: list[str], log: Path) -> None:
        self.log = log
        name = Path(args[0]).name
        with open(log, "wb") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: listening(self.port), name, 10.0, self.process, log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop_groups([self.process], grace_s=10.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _NginxDaemon(_Daemon):
    """nginx run on a configuration in its own scratch folder (`prefix`)."""

    prefix: Path

    def _start_nginx(self) -> None:
        """nginx on `prefix/nginx.conf`, ready once its worker runs: the master listens before it forks
        one, and a benchmark that read the process tree at once counted the master alone (nginx's CPU
        then near zero)."""
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self._start(
            [binary, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"), "-g", "daemon off;"],
            self.prefix / "stderr.log",
        )
        try:
            wait_until(lambda: _has_children(self.process.pid), "nginx's worker", 10.0, self.process, self.log)
        except BaseException:
            self.stop()
            raise


class Nginx(_NginxDaemon):
    """nginx with the project's deploy/nginx.conf, pointed at the given upstreams, in a scratch folder."""

    def __init__(self, tmp: Path, upstreams: list[str], config: Path = REPO / "deploy" / "nginx.conf"):
        self.prefix = tmp / "nginx"
        self.prefix.mkdir(parents=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        text = config.read_text()
        servers = "".join(f"        server {u.removeprefix('http://')};\n" for u in upstreams)
        text = re.sub(r"(        server 127\.0\.0\.1:\d+;\n)+", servers, text)
        text = text.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{self.port};")
        text = text.replace("worker_processes auto;", "worker_processes 1;")
        (self.prefix / "nginx.conf").write_text(text)
        self._start_nginx()


class NginxRouter(_NginxDaemon):
    """`expert-router nginx-router DEPLOYMENT` written to a scratch folder and run by nginx: the routing
    decision in nginx's Lua, every stream relayed by nginx."""

    def __init__(self, tmp: Path, deployment: Path, workers: int = 1, name: str = "nginx-router"):
        self.prefix = tmp / name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        written = subprocess.run(
            cli_args("nginx-router", str(deployment), "--out", str(self.prefix), "--port", str(self.port))
            + ["--workers", str(workers)],
            capture_output=True,
            text=True,
        )
        if written.returncode != 0:
            raise RuntimeError(f"expert-router nginx-router failed: {written.stderr.strip()}")
        self._start_nginx()


def _has_children(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except OSError:
        return True  # no /proc here: nothing to wait for


class RedisServer(_Daemon):
    """A Redis server on a free loopback port, nothing saved to disk (the store of shared limits)."""

    def __init__(self, tmp: Path):
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        tmp.mkdir(parents=True, exist_ok=True)
        no_disk = ["--save", "", "--appendonly", "no", "--dir", str(tmp)]
        self._start([binary, "--port", str(self.port), "--bind", "127.0.0.1", *no_disk], tmp / "redis.log")


class ExtProc(Server):
    """`expert-router extproc DEPLOYMENT` on free ports; ready once its /metrics answers (started last)."""

    def __init__(self, tmp: Path, deployment: Path, *flags: str):
        self.grpc_port = free_port()
        metrics_port = free_port()
        super().__init__(
            cli_args(
                "extproc", str(deployment), "--port", str(self.grpc_port), "--metrics-port", str(metrics_port), *flags
            ),
            metrics_port,
            tmp / "extproc.log",
            ready_path="/metrics",
        )


class Envoy(Server):
    """Envoy running the project's deploy/envoy/envoy.yaml fitted to a deployment; `url` is its listener."""

    def __init__(
        self, tmp: Path, deployment: Path, extproc_port: int, template: Path = REPO / "deploy" / "envoy" / "envoy.yaml"
    ):
        import yaml

        from expert_router.config import load_deployment
        from expert_router.extproc.envoy import Addresses, envoy_binary, render_config

        listen_port, admin_port = free_port(), free_port()
        addresses = Addresses(listen_port=listen_port, extproc_port=extproc_port, admin_port=admin_port)
        config = render_config(yaml.safe_load(template.read_text()), load_deployment(deployment), addresses)
        path = tmp / "envoy.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        args = [
            str(envoy_binary()),
            "-c",
            str(path),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ]
        super().__init__(args, admin_port, tmp / "envoy.log", ready_path="/ready")
        self.admin_url = self.url
        try:  # the admin port answers before the listeners are up; /ready says 200 once they are
            wait_until(lambda: http_ok(self.admin_url + "/ready"), "envoy", 30.0, self.process, self.log)
        except BaseException:
            self.stop()
            raise
        self.port = listen_port
        self.url = f"http://127.0.0.1:{listen_port}"


def real_and_virtual(
    tmp: Path, items: list[WorkItem], users: int, seconds: float, dilation: float, *emulate_flags: str
) -> tuple[list[RequestRecord], list[RequestRecord]]:
    """The same cell both ways: one engine of configuration E served for real by `expert-router emulate`
    (time dilation `dilation`) and loaded by `expert-router load` for `seconds`, its records scaled back to
    emulated time; then simulated in virtual time for `seconds / dilation`. Raises on a failed load."""
    save_workload(items, tmp / "workload.jsonl")
    port = free_port()
    emulate = ["--preset", "paper-e", "--instances", "1", "--port", str(port), "--served-model-name", "m"]
    emulate += emulate_flags
    with Server(cli_args("emulate", *emulate, "--time-dilation", str(dilation)), port, tmp / "emulate.log"):
        load = ["--model", "m", "--workload", str(tmp / "workload.jsonl"), "--users", str(users)]
        result = subprocess.run(
            cli_args("load", f"http://127.0.0.1:{port}", *load, "--duration", str(seconds), "--out", str(tmp / "real")),
            capture_output=True,
            text=True,
            timeout=600,
        )
    if result.returncode != 0:
        raise RuntimeError(f"expert-router load failed: {result.stderr}")
    real = [scale_times(r, dilation) for r in read_records(tmp / "real" / "records.jsonl")]
    service = Service(name="engine", command=" ".join(["expert-router emulate", *emulate]))
    configuration = Configuration(name="E1", url=f"http://127.0.0.1:{port}", model="m", services=[service])
    simulate_cell(
        Cell(configuration, "uniform", users, 0),
        tmp,
        items,
        [0] * len(items),
        Load(users=users, duration_s=seconds / dilation),
        GatewayOverhead(),
        tmp / "virtual",
    )
    return real, read_records(tmp / "virtual" / "records.jsonl")
