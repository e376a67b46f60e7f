"""Starting, waiting for and stopping the servers the project runs as child processes.

Servers run in their own process group (`start_new_session=True`), so one signal reaches the server
and its children alike (vLLM's engine processes, gateway workers). Every "is it up yet?" loop in the
project is `wait_until`: it polls a check, fails fast when the process exits, and names its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from expert_router.errors import UserError


def signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def stop_groups(processes: list[subprocess.Popen[bytes]], grace_s: float = 15.0) -> None:
    """SIGTERM every group, wait up to `grace_s`, then SIGKILL each group, even if its leader is gone."""
    for process in processes:
        if process.poll() is None:
            signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.1, deadline - time.monotonic()))
    for process in processes:
        signal_group(process, signal.SIGKILL)
        process.wait()


def http_ok(url: str, timeout_s: float = 2.0, any_status: bool = False) -> bool:
    """True when GET `url` answers 200 (or, with `any_status`, answers at all)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200 or any_status)
    except urllib.error.HTTPError:
        return any_status
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages ('' when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_until(
    ready: Callable[[], bool],
    what: str,
    timeout_s: float,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    interval_s: float = 0.05,
    on_wait: Callable[[], None] | None = None,
) -> None:
    """Poll `ready()` until it is true. Raises UserError when `process` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s

    def where() -> str:  # read when it fails: what the process wrote while starting, not before
        return f"; its log: {log}\n{tail(log)}" if log is not None else ""

    while True:
        if process is not None and process.poll() is not None:
            raise UserError(f"{what} exited with code {process.returncode} while starting{where()}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise UserError(f"{what} was not ready within {timeout_s:g} s{where()}")
        if on_wait is not None:
            on_wait()
        time.sleep(interval_s)
