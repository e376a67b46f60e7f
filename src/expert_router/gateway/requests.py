"""What the gateway needs from a client's request, checked before anything goes upstream.

The gateway validates only what it relies on (JSON object, the text it routes on, and the fields every
server here reads alike: `stream`, `stream_options`, `model`, `max_tokens`, in `expert_router.api_request`);
everything else is forwarded untouched for the expert server to judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from expert_router.api_request import check_role, common_fields, json_object
from expert_router.errors import BadRequest


@dataclass
class ClientRequest:
    body: dict[str, Any]
    chat: bool
    stream: bool
    model: str | None
    text: str
    """What the classifier reads: the prompt, or for chat the text of every user message."""


def parse_request(raw: bytes, chat: bool) -> ClientRequest:
    body = json_object(raw)
    fields = common_fields(body, chat)
    text = _chat_text(body) if chat else _prompt_text(body)
    return ClientRequest(body=body, chat=chat, stream=fields.stream, model=fields.model, text=text)


def body_naming(client: ClientRequest, model: str) -> bytes:
    """The client's body naming `model` (the expert's), as it goes upstream."""
    try:
        return orjson.dumps({**client.body, "model": model})
    except orjson.JSONEncodeError as exc:  # orjson reads JSON nested 1,024 deep but writes only ~254
        raise BadRequest(f"the request body cannot be forwarded: {exc}") from None


def _prompt_text(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if prompt is None:
        raise BadRequest("'prompt' is required", param="prompt")
    if isinstance(prompt, list):
        if not prompt:
            raise BadRequest("'prompt' is empty", param="prompt")
        if not all(isinstance(p, str) for p in prompt):
            raise BadRequest(
                "'prompt' must be a string or a list of strings: the gateway routes on text, not token ids",
                param="prompt",
            )
        text = "\n".join(prompt)
    elif isinstance(prompt, str):
        text = prompt
    else:
        raise BadRequest("'prompt' must be a string or a list of strings", param="prompt")
    if not text.strip():
        raise BadRequest("'prompt' is empty", param="prompt")
    return text


def _chat_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", param="messages")
    user_parts: list[str] = []
    all_parts: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object", param="messages")
        check_role(message, i)
        role = message["role"]
        text = _content_text(message.get("content"), i)
        all_parts.append(text)
        if role == "user":
            user_parts.append(text)
    text = "\n".join(user_parts) or "\n".join(all_parts)
    if not text.strip():
        raise BadRequest("the messages hold no text to answer", param="messages")
    return text


def _content_text(content: object, i: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise BadRequest(f"messages[{i}].content parts must be objects with a 'type'", param="messages")
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise BadRequest(f"messages[{i}].content text part needs a string 'text'", param="messages")
                texts.append(part["text"])
        return "\n".join(texts)
    raise BadRequest(f"messages[{i}].content must be a string or a list of parts", param="messages")
