"""The fields of an OpenAI-style completion request that every server here reads, checked one way.

The gateway, the emulated engine and the synthetic expert all read `model`, `stream`, `stream_options`
and the token cap. Checked three ways, a value of the wrong type was a 400 in one, silently a default
in another (`max_tokens: 0` became 16, `stream: "false"` streamed) and a 500 or a stream cut after its
last token in the third (`stream_options: [1]`). Here each is checked as vLLM's request models check
it, and refused with an OpenAI-style 400 that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from expert_router.errors import BadRequest


@dataclass(frozen=True)
class CommonFields:
    model: str | None
    stream: bool
    max_tokens: int | None
    """`max_completion_tokens` for chat when given (OpenAI's newer name), else `max_tokens`; None: unset."""
    include_usage: bool
    """`stream_options.include_usage`: a final chunk with the answer's usage."""
    continuous_usage: bool
    """`stream_options.continuous_usage_stats` (vLLM's): usage on every chunk."""


def json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
"""The chat roles the API knows: a message of another role (or none) is refused, as vLLM refuses it."""


def check_role(message: dict[str, Any], i: int) -> None:
    role = message.get("role")
    if not isinstance(role, str) or role not in CHAT_ROLES:  # a list or an object is no role (nor hashable)
        raise BadRequest(f"messages[{i}].role must be one of {sorted(CHAT_ROLES)}", param="messages")


def common_fields(body: dict[str, Any], chat: bool) -> CommonFields:
    """`model`, `stream`, `stream_options` and the token cap of `body`, each of the type the API gives it."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", param="model")
    stream = _flag(body, "stream", "stream")
    options = body.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    if options and not stream:  # vLLM's own check: accepted here, it went to an engine that refused it
        raise BadRequest("Stream options can only be defined when `stream=True`.", param="stream_options")
    for cap in ("max_tokens", "max_completion_tokens") if chat else ("max_tokens",):  # each checked, one used
        value = body.get(cap)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BadRequest(f"'{cap}' must be a positive integer", param=cap)
    name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(name)
    return CommonFields(
        model=model,
        stream=stream,
        max_tokens=max_tokens,
        include_usage=_flag(options, "include_usage", "stream_options"),
        continuous_usage=_flag(options, "continuous_usage_stats", "stream_options"),
    )


def _flag(fields: dict[str, Any], name: str, param: str) -> bool:
    value = fields.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be true or false", param=param)
    return value


class UnknownModel(BadRequest):
    """A model the server does not serve: vLLM's 404, its type and code."""

    status = 404
    error_type = "NotFoundError"

    def __init__(self, model: object):
        super().__init__(f"The model `{model}` does not exist.", code="model_not_found", param="model")


def one_choice(body: dict[str, Any]) -> None:
    """Servers that answer one choice per request (the emulator, the synthetic expert) refuse more,
    rather than silently answer one: `n` above 1, or a batch of several prompts."""
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise BadRequest("only n=1 is supported", param="n")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)) and len(prompt) > 1:
        raise BadRequest("one prompt per request: send a batch as separate requests", param="prompt")
