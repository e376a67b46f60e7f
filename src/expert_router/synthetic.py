"""A synthetic OpenAI-compatible expert: streams tokens on a fixed schedule and stamps each chunk.

It runs no model. It exists so that the parts around a model can be measured and tested against an
upstream whose timing is known exactly: the gateway's added latency (against a direct connection and
nginx), the user simulator's clock (every chunk carries `t`, the server's `time.monotonic()` at send,
which is the same clock in every process of a Linux machine), and faults (a replica that refuses,
hangs, or dies mid-stream). Each chunk carries one token, as vLLM sends them by default, or
`tokens_per_chunk` of them, as servers that pack tokens do; token i is due at first_token_ms +
i * interval_ms and a chunk leaves when its last token is due. Usage is sent as vLLM sends it: on every
chunk when `stream_options.continuous_usage_stats` asks, at the end when `include_usage` asks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiohttp import web

from expert_router.api_request import CommonFields, UnknownModel, common_fields, json_object, one_choice
from expert_router.errors import BadRequest
from expert_router.http import (
    MAX_BODY_BYTES,
    client_error_response,
    error_response,
    event_stream,
    json_errors,
    request_body,
)


@dataclass
class SyntheticSettings:
    tokens: int = 16
    """Tokens per answer when the request's max_tokens does not ask for fewer."""
    interval_ms: float = 10.0
    """Gap between consecutive tokens."""
    first_token_ms: float = 0.0
    """Delay before the first token (a stand-in for prefill)."""
    models: tuple[str, ...] = ("synthetic",)
    """Model names served; requests for others get 404, as vLLM answers."""
    fail_status: int | None = None
    """Answer every generation request with this HTTP status instead."""
    die_after_tokens: int | None = None
    """Drop the connection after this many tokens, without finishing the stream."""
    end_after_tokens: int | None = None
    """End the stream cleanly after this many tokens, with neither a finish_reason nor [DONE]: cut short."""
    send_done: bool = True
    """End streams with `data: [DONE]` (vLLM, OpenAI) or just close them (some servers)."""
    tokens_per_chunk: int = 1
    """Tokens packed into one chunk."""
    reported_waiting: int = 0
    """Added to `vllm:num_requests_waiting` in /metrics: a replica that says it has a queue."""
    usage: str = "asked"
    """`asked`: usage as the request's stream_options ask; `final`: only at the end; `none`: never."""


@dataclass
class SyntheticStats:
    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    inflight: int = 0
    max_inflight: int = 0
    models: dict[str, int] = field(default_factory=dict)
    last_body: dict | None = None


SETTINGS_KEY = web.AppKey("settings", SyntheticSettings)
STATS_KEY = web.AppKey("stats", SyntheticStats)


def build_app(settings: SyntheticSettings) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
    app[SETTINGS_KEY] = settings
    app[STATS_KEY] = SyntheticStats()
    app.router.add_post("/v1/completions", generate)
    app.router.add_post("/v1/chat/completions", generate)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    return app


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def models(request: web.Request) -> web.Response:
    names = request.app[SETTINGS_KEY].models
    return web.json_response(
        {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "synthetic"} for n in names]}
    )


async def metrics(request: web.Request) -> web.Response:
    """vLLM's load gauges under vLLM's names, so gateways read this server as they read vLLM."""
    s, settings = request.app[STATS_KEY], request.app[SETTINGS_KEY]
    text = (
        f'# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name="synthetic"}} {s.inflight}\n'
        f'# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name="synthetic"}} '
        f"{settings.reported_waiting}\n"
    )
    return web.Response(text=text, content_type="text/plain")


async def stats(request: web.Request) -> web.Response:
    s = request.app[STATS_KEY]
    return web.json_response(
        {
            "requests": s.requests,
            "completed": s.completed,
            "cancelled": s.cancelled,
            "inflight": s.inflight,
            "max_inflight": s.max_inflight,
            "models": s.models,
            "last_body": s.last_body,
        }
    )


async def generate(request: web.Request) -> web.StreamResponse:
    settings, stats = request.app[SETTINGS_KEY], request.app[STATS_KEY]
    chat = request.path.endswith("/chat/completions")
    try:
        body = json_object(await request_body(request))
        stats.requests += 1
        stats.last_body = body
        fields = common_fields(body, chat)  # first: a model that is not a string is a 400, not an unknown one
        model = fields.model or settings.models[0]  # none named: vLLM's server answers with its base model
        fields = replace(fields, model=model)
        stats.models[model] = stats.models.get(model, 0) + 1
        if settings.fail_status is not None:
            return error_response(settings.fail_status, "synthetic failure", "server_error")
        if model not in settings.models:
            raise UnknownModel(model)
        one_choice(body)
    except BadRequest as exc:
        return client_error_response(exc)
    n_tokens = min(fields.max_tokens or settings.tokens, settings.tokens)
    stats.inflight += 1
    stats.max_inflight = max(stats.max_inflight, stats.inflight)
    try:
        if fields.stream:
            return await _stream(request, settings, fields, chat, n_tokens)
        await asyncio.sleep((settings.first_token_ms + settings.interval_ms * max(n_tokens - 1, 0)) / 1000)
        stats.completed += 1
        return web.json_response(_whole_answer(model, chat, n_tokens))
    except (asyncio.CancelledError, ConnectionResetError):
        stats.cancelled += 1
        raise
    finally:
        stats.inflight -= 1


def _token(i: int) -> str:
    return f" t{i}"


def _whole_answer(model: str, chat: bool, n_tokens: int) -> dict:
    text = "".join(_token(i) for i in range(n_tokens))
    usage = {"prompt_tokens": 1, "completion_tokens": n_tokens, "total_tokens": n_tokens + 1}
    finish = "length"
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": usage,
        }
    choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage,
    }


async def _stream(
    request: web.Request, settings: SyntheticSettings, fields: CommonFields, chat: bool, n_tokens: int
) -> web.StreamResponse:
    response = event_stream(request, {})
    await response.prepare(request)
    head = _chunk_head(fields.model, chat)
    final_usage = settings.usage != "none" and fields.include_usage
    running_usage = settings.usage == "asked" and final_usage and fields.continuous_usage
    if chat:  # vLLM's first chat chunk carries the role and no token
        role: dict[str, Any] = {
            **head,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }
        if running_usage:
            role["usage"] = _usage(0)
        await response.write(b"data: " + orjson.dumps(role) + b"\n\n")
    loop = asyncio.get_running_loop()
    start = loop.time() + settings.first_token_ms / 1000
    per_chunk = settings.tokens_per_chunk
    for first in range(0, n_tokens, per_chunk):
        last = min(first + per_chunk, n_tokens) - 1
        if settings.die_after_tokens is not None and first >= settings.die_after_tokens:
            request.transport.abort()  # type: ignore[union-attr]
            return response
        if settings.end_after_tokens is not None and first >= settings.end_after_tokens:
            await response.write_eof()
            return response
        delay = start + last * settings.interval_ms / 1000 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        text = "".join(_token(i) for i in range(first, last + 1))
        finish = "length" if last == n_tokens - 1 else None
        choice = (
            {"index": 0, "delta": {"content": text}, "finish_reason": finish}
            if chat
            else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        )
        chunk: dict[str, Any] = {**head, "choices": [choice], "t": time.monotonic()}
        if running_usage:
            chunk["usage"] = _usage(last + 1)
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    if final_usage:
        await response.write(b"data: " + orjson.dumps({**head, "choices": [], "usage": _usage(n_tokens)}) + b"\n\n")
    if settings.send_done:
        await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    request.app[STATS_KEY].completed += 1
    return response


def _chunk_head(model: str | None, chat: bool) -> dict[str, Any]:
    """The fields every chunk of one stream shares."""
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
    }


def _usage(completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": 1, "completion_tokens": completion_tokens, "total_tokens": completion_tokens + 1}
