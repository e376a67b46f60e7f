"""The emulated engine behind an OpenAI-compatible HTTP API, streaming like vLLM.

Routes: POST /v1/completions and /v1/chat/completions (streaming or whole answers, usage, ignore_eos),
GET /v1/models, /health, /metrics (vLLM's metric names), /stats (the emulator's own numbers). Text is
filler: what is emulated is timing. Prompt length in tokens is the prompt's whitespace-separated word
count (what the user simulator counts when it has no tokenizer), or the length of a token-id list.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from expert_router.api_request import (
    CommonFields,
    UnknownModel,
    check_role,
    common_fields,
    json_object,
    one_choice,
)
from expert_router.emulate.metrics import EngineMetrics
from expert_router.emulate.profiles import Model
from expert_router.emulate.realtime import Lateness, RealtimeDriver, Stream
from expert_router.errors import BadRequest, UserError
from expert_router.http import (
    MAX_BODY_BYTES,
    client_error_response,
    error_response,
    event_stream,
    json_errors,
    request_body,
)

DRIVER_KEY = web.AppKey("driver", RealtimeDriver)
METRICS_KEY = web.AppKey("metrics", EngineMetrics)
NAMES_KEY = web.AppKey("names", tuple)
FILLER = (" the", " model", " says", " this", " and", " that", ".", " It", " is", " emulated")
DEFAULT_MAX_TOKENS = 16
"""OpenAI's default max_tokens for completions."""


def build_app(driver: RealtimeDriver, metrics: EngineMetrics, names: tuple[str, ...]) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
    app[DRIVER_KEY], app[METRICS_KEY], app[NAMES_KEY] = driver, metrics, names
    app.router.add_post("/v1/completions", generate)
    app.router.add_post("/v1/chat/completions", generate)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/stats", stats)

    async def start_driver(app: web.Application) -> Any:
        task = asyncio.create_task(driver.run())
        task.add_done_callback(_report_crash)
        yield
        task.cancel()

    app.cleanup_ctx.append(start_driver)
    return app


def _report_crash(task: asyncio.Task[None]) -> None:
    """An engine that stops would leave every stream hanging: say so loudly and stop the process."""
    if not task.cancelled() and task.exception() is not None:
        import os
        import signal
        import traceback

        traceback.print_exception(task.exception(), file=sys.stderr)
        os.kill(os.getpid(), signal.SIGTERM)


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def models(request: web.Request) -> web.Response:
    data = [{"id": n, "object": "model", "owned_by": "expert-router-emulator"} for n in request.app[NAMES_KEY]]
    return web.json_response({"object": "list", "data": data})


async def prometheus(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS_KEY].exposition(), content_type="text/plain")


async def stats(request: web.Request) -> web.Response:
    driver = request.app[DRIVER_KEY]
    if request.query.get("reset") == "lateness":  # benchmarks measure one load level at a time
        driver.lateness = Lateness()
    engine, late = driver.engine, driver.lateness
    s = engine.stats
    return web.json_response(
        {
            "engine": engine.config.describe(),
            "time_dilation": driver.dilation,
            "steps": s.steps,
            "busy_s": s.busy_s,
            "prompt_tokens": s.prompt_tokens,
            "generation_tokens": s.generation_tokens,
            "finished": s.finished,
            "finish_reasons": s.finish_reasons,
            "preemptions": s.preemptions,
            "running": engine.running,
            "waiting": engine.waiting,
            "kv_cache_usage": engine.blocks.usage,
            "kv_capacity_tokens": engine.blocks.capacity_tokens,
            "lateness_ms": {
                "mean": late.mean * 1000,
                "p50": late.percentile(50) * 1000,
                "p99": late.percentile(99) * 1000,
                "max": late.worst * 1000,
                "steps": late.steps,
            },
        }
    )


def prompt_tokens(body: dict[str, Any], chat: bool) -> int:
    """Prompt length: token ids are counted, text is counted in words."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list", param="messages")
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise BadRequest(f"messages[{i}] must be an object with a 'role'", param="messages")
            check_role(message, i)
        return sum(_count(m.get("content")) for m in messages) or 1
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt (`one_choice` refuses more)
    if prompt is None:
        raise BadRequest("'prompt' is required", param="prompt")
    if not _a_prompt(prompt):  # 5, {}, true, "" and [] were served, where vLLM answers 400
        raise BadRequest("'prompt' must be a non-empty string or a non-empty list of token ids", param="prompt")
    return _count(prompt) or 1


def _a_prompt(prompt: object) -> bool:
    if isinstance(prompt, str):
        return prompt != ""
    return (
        isinstance(prompt, list)
        and bool(prompt)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)
    )


def _count(content: Any) -> int:
    """Words of a string, ids of a token-id list, words of a list of text parts; one level of list only,
    as the API has (a deeper nesting recursed until Python's limit: a 500)."""
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        if all(isinstance(x, int) and not isinstance(x, bool) for x in content):
            return len(content)
        words = 0
        for part in content:
            text = part.get("text") if isinstance(part, dict) else part
            if isinstance(text, str):
                words += len(text.split())
            elif text is not None or not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise BadRequest("content must be a string, token ids, or a list of parts with a 'type'")
        return words
    if content is not None:  # 5 or {} was counted as no words and served
        raise BadRequest("content must be a string or a list of parts", param="messages")
    return 0


def _parse(
    raw: bytes, chat: bool, names: tuple[str, ...], model: Model
) -> tuple[dict[str, Any], CommonFields, int, int]:
    """The request's body and checked fields, prompt tokens and token cap; a BadRequest for anything a vLLM
    server refuses."""
    body = json_object(raw)
    fields = common_fields(body, chat)
    if fields.model is None:  # none named: vLLM's server answers with its base model
        body["model"] = names[0]
    elif fields.model not in names:
        raise UnknownModel(fields.model)
    one_choice(body)
    n_prompt = prompt_tokens(body, chat)
    max_tokens = fields.max_tokens or DEFAULT_MAX_TOKENS
    if n_prompt + max_tokens > model.max_position:
        raise BadRequest(  # vLLM's words
            f"This model's maximum context length is {model.max_position} tokens. However, you requested "
            f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="max_tokens",
        )
    return body, fields, n_prompt, max_tokens


async def generate(request: web.Request) -> web.StreamResponse:
    chat = request.path.endswith("/chat/completions")
    driver = request.app[DRIVER_KEY]
    try:
        body, fields, n_prompt, max_tokens = _parse(
            await request_body(request), chat, request.app[NAMES_KEY], driver.engine.config.model
        )
    except BadRequest as exc:
        return client_error_response(exc)
    try:
        stream = driver.submit(n_prompt, max_tokens, bool(body.get("ignore_eos")))
    except UserError as exc:
        return error_response(400, str(exc))
    try:
        if fields.stream:
            return await _stream(request, body, chat, stream, fields.include_usage, fields.continuous_usage)
        return await _whole(body, chat, stream)
    finally:
        driver.cancel(stream)  # a no-op when it finished; frees its KV blocks when the client left


def _head(body: dict[str, Any], chat: bool) -> dict[str, Any]:
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": body["model"],
    }


def _usage(stream: Stream, tokens: int | None = None) -> dict[str, int]:
    """The answer's usage; `tokens`: those generated so far (a running count), else all of them."""
    completion = stream.tokens if tokens is None else tokens
    return {
        "prompt_tokens": stream.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": stream.prompt_tokens + completion,
    }


async def _stream(
    request: web.Request, body: dict[str, Any], chat: bool, stream: Stream, include_usage: bool, continuous: bool
) -> web.StreamResponse:
    """vLLM's stream: the role first (chat), a chunk a token, the usage last when `include_usage` asks,
    and a running usage on every chunk when `continuous_usage_stats` asks too (as vLLM gives it only then)."""
    running = include_usage and continuous
    response = event_stream(request, {"X-Emulator-Time-Dilation": str(request.app[DRIVER_KEY].dilation)})
    await response.prepare(request)
    head = _head(body, chat)
    if chat:  # vLLM's first chat chunk carries the role and no token
        role = {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        if running:
            role["usage"] = _usage(stream, 0)
        await response.write(b"data: " + orjson.dumps(role) + b"\n\n")
    async for event, at in stream.events():
        text = FILLER[event.position % len(FILLER)]
        if chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": event.finish_reason}
        else:
            choice = {"index": 0, "text": text, "finish_reason": event.finish_reason, "logprobs": None}
        # "t": when the emulated GPU produced the token (time.monotonic, shared by every process here), as
        # the synthetic expert stamps its chunks: the user simulator keeps it, so timing error is measurable
        chunk = {**head, "choices": [choice], "t": at}
        if running:
            chunk["usage"] = _usage(stream, event.position + 1)
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    if include_usage:
        await response.write(b"data: " + orjson.dumps({**head, "choices": [], "usage": _usage(stream)}) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _whole(body: dict[str, Any], chat: bool, stream: Stream) -> web.Response:
    parts, finish = [], "length"
    async for event, _ in stream.events():
        parts.append(FILLER[event.position % len(FILLER)])
        finish = event.finish_reason or finish
    text = "".join(parts)
    head = _head(body, chat)
    if chat:
        head["object"] = "chat.completion"
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
        }
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    return web.json_response({**head, "choices": [choice], "usage": _usage(stream)})
