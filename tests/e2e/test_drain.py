"""Graceful shutdown of the gateway: SIGTERM during streams, and not one of them is cut."""

from __future__ import annotations

import http.client
import json
import signal
import threading
from pathlib import Path

import pytest

from expert_router.processes import http_ok, wait_until
from expert_router.testing import gateway, listening, synthetic_expert, write_deployment

pytestmark = pytest.mark.e2e

TOKENS = 20


@pytest.fixture(scope="module")
def classifier(small_classifier: Path) -> Path:
    return small_classifier  # tests/conftest.py


class Stream(threading.Thread):
    """One streaming request; `first` is set at its first token, `texts` holds every token read."""

    def __init__(self, port: int, prompt: str, tokens: int = TOKENS):
        super().__init__(daemon=True)
        self.port, self.prompt, self.tokens = port, prompt, tokens
        self.first = threading.Event()
        self.texts: list[str] = []
        self.done = False
        self.error: Exception | None = None

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            body = json.dumps({"prompt": self.prompt, "stream": True, "max_tokens": self.tokens}).encode()
            connection.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            while line := response.readline():
                if line.startswith(b"data: [DONE]"):
                    self.done = True
                elif line.startswith(b"data: "):
                    self.texts.append(json.loads(line[6:])["choices"][0]["text"])
                    self.first.set()
        except Exception as exc:
            self.error = exc
        finally:
            self.first.set()
            connection.close()


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory):
    """Answers as long as max_tokens asks (up to 1000), a token every 100 ms."""
    with synthetic_expert(
        tmp_path_factory.mktemp("experts"), "experts", "--tokens", "1000", "--interval-ms", "100"
    ) as server:
        yield server


def test_sigterm_drains_streams_in_flight_and_refuses_new_connections(tmp_path, classifier, experts):
    deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: [experts.url] for c in range(8)})
    with gateway(tmp_path, deployment, "--drain-timeout-s", "60") as gw:
        streams = [Stream(gw.port, f"kernel compiler pointer linux {i}") for i in range(4)]
        for stream in streams:
            stream.start()
        for stream in streams:
            assert stream.first.wait(30) and stream.error is None
        assert not any(s.done for s in streams)  # the signal comes mid-stream
        gw.process.send_signal(signal.SIGTERM)
        # Not ready from now on: new connections are refused, so /health probes fail...
        wait_until(lambda: not listening(gw.port), "the gateway to stop accepting", 10.0)
        assert not http_ok(gw.url + "/health")
        # ...while every stream already under way runs to its end.
        for stream in streams:
            stream.join(60)
            assert stream.error is None and stream.done
            assert stream.texts == [f" t{i}" for i in range(TOKENS)]
        assert gw.process.wait(30) == 0


def test_the_drain_timeout_ends_streams_that_run_too_long(tmp_path, classifier, experts):
    deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: [experts.url] for c in range(8)})
    with gateway(tmp_path, deployment, "--drain-timeout-s", "0.5") as gw:
        stream = Stream(gw.port, "kernel compiler pointer linux", tokens=1000)
        stream.start()
        assert stream.first.wait(30)
        gw.process.send_signal(signal.SIGTERM)
        assert gw.process.wait(30) == 0
        stream.join(30)
        assert not stream.done and len(stream.texts) < 1000
