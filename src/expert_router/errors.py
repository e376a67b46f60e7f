"""Every error the project raises on purpose, in one tree.

    ExpertRouterError
    ├── UserError            bad input or a bad environment; the CLI prints it and exits 2
    ├── ClientError          an answer the gateway gives a client: status, OpenAI error type, code, param
    │   ├── BadRequest       4xx: the request itself is wrong (JSON, fields, unknown model, too large)
    │   ├── Saturated        429: the expert's in-flight slots stayed full past the queue timeout
    │   └── Unavailable      503: no expert could take the request (all down, attempts used up)
    ├── ReplicaFailed        one replica failed before its first byte: the request may go elsewhere
    └── ConnectionFailed     an HTTP connection failed: refused, reset, closed early, not HTTP

A `ClientError` becomes an OpenAI-style JSON body with its status; `ReplicaFailed` never reaches a
client (fail-over turns it into the next attempt, or into `Unavailable`); `ConnectionFailed` is raised
by the connection layer (`expert_router.wire`) that the gateway and the user simulator share.
"""

from __future__ import annotations


class ExpertRouterError(Exception):
    """The root: anything the project raises on purpose."""


class UserError(ExpertRouterError):
    """Bad input or a bad environment, described so that the user knows what to change."""


class ClientError(ExpertRouterError):
    """An error answer to an HTTP client, with what its OpenAI-style body needs."""

    status = 500
    error_type: str | None = None

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status if status is not None else type(self).status
        self.code = code
        self.param = param
        self.headers = headers or {}


class BadRequest(ClientError):
    """The client's mistake: 400 unless a more precise 4xx is given (404 model, 413 size, 415 encoding)."""

    status = 400


class Saturated(ClientError):
    """The expert's in-flight slots stayed full past the queue timeout."""

    status = 429


class Unavailable(ClientError):
    """No expert could take the request."""

    status = 503
    error_type = "service_unavailable"


class ReplicaFailed(ExpertRouterError):
    """A replica failed before anything reached the client (`kind`: connect, timeout, status, empty)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class ConnectionFailed(ExpertRouterError):
    """The HTTP connection failed: refused, reset, closed early or answered what is not HTTP."""
