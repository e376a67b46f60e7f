"""Stopping a server the project started, and everything it started in turn.

Servers run in their own process group (`start_new_session=True`), so one signal reaches the server
and its children alike (vLLM's engine processes, gateway workers).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time


def signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def stop_groups(processes: list[subprocess.Popen], grace_s: float = 15.0) -> None:
    """SIGTERM every group, wait up to `grace_s`, then SIGKILL each group, even if its leader is gone."""
    for process in processes:
        if process.poll() is None:
            signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for process in processes:
        signal_group(process, signal.SIGKILL)
        process.wait()
