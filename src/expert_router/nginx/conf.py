"""The nginx configuration of the Lua router, as text: the server, its routing locations, its upstreams
(one a replica), and JSON for the errors nginx answers itself. `render.write` writes it beside the Lua."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from expert_router.config import Deployment
from expert_router.errors import UserError
from expert_router.http import error_body


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: str = "auto"


KEEPALIVE_TIMEOUT_S = 4
"""Idle connections to a replica are closed before the replica closes them (uvicorn's, vLLM's server,
after 5 s): with no retry on the same replica, a request sent on a connection the replica had just
closed would count as the replica's failure and go to another one."""

NGINX_ERRORS = {
    400: (400, "malformed HTTP request"),
    413: (413, "request body too large"),
    414: (414, "the request line is too long"),
    494: (431, "the request headers are too large"),
    501: (501, "Transfer-Encoding not implemented"),
    505: (505, "HTTP version not supported"),
}
"""What nginx answers itself before the Lua runs (nginx's status: the status and message sent). Its own
pages are HTML; these are JSON errors, as the gateway's server answers the same mistakes (494, nginx's
own code for headers too large, goes out as the gateway's 431)."""


def _nginx_errors(indent: str, pages: bool, codes: tuple[int, ...] = tuple(NGINX_ERRORS)) -> str:
    """error_page lines sending each of `codes` to its location, or (`pages`) those locations."""
    if not pages:  # a URI, not a named location: an error in the request line leaves no URI to redirect
        return "".join(f"{indent}error_page {code} = /_errors/{code};\n" for code in codes)
    return "".join(
        f"{indent}location = /_errors/{code} {{\n"
        f"{indent}    internal;\n"
        f"{indent}    default_type application/json;\n"
        f"{indent}    return {status} '{_json_error(status, message)}';\n"
        f"{indent}}}\n"
        for code, (status, message) in NGINX_ERRORS.items()
    )


def _json_error(status: int, message: str) -> str:
    """An error body for nginx's single-quoted `return` text (which reads a backslash as an escape)."""
    kind = "invalid_request_error" if status < 500 else None
    return json.dumps(error_body(status, message, kind)).replace("\\", "\\\\").replace("'", "\\'")


def render_config(
    deployment: Deployment, names: dict[str, str], lua_dirs: list[Path], modules: Path, cjson: Path, listen: Listen
) -> str:
    """`lua_dirs`: the router's own folder first (route.lua's), then any other module's (the Redis client)."""
    settings = deployment.gateway
    upstreams = "".join(_upstream(name, url) for url, name in names.items())
    read_timeout = max(settings.first_token_timeout_s, settings.idle_timeout_s)
    return TEMPLATE.format(
        ndk=modules / "ndk_http_module.so",
        lua=modules / "ngx_http_lua_module.so",
        workers=listen.workers,
        max_body=settings.max_body_bytes,
        router=lua_dirs[0],
        lua_path="".join(f"{directory}/?.lua;" for directory in lua_dirs),
        cjson_dir=cjson.parent,
        upstreams=upstreams,
        host=listen.host,
        port=listen.port,
        route=ROUTE,
        proxy=PROXY.format(
            connect=f"{settings.connect_timeout_s:g}s",
            read=f"{read_timeout:g}s",
            # A location's error_page hides the server's. Only 413 (a body past the limit) arises here: the
            # rest come with the head, before a location is chosen. With proxy_intercept_errors an expert's
            # own 4xx would be replaced too: its 400s must pass (an expert's 413, rare, becomes this one).
            client_errors=_nginx_errors(" " * 12, pages=False, codes=(413,)),
        ),
        client_errors=_nginx_errors(" " * 8, pages=False),
        error_pages=_nginx_errors(" " * 8, pages=True),
    )


def _upstream(name: str, url: str) -> str:
    return (
        f"    upstream {name} {{\n        server {address(url)};\n        keepalive 256;\n"
        f"        keepalive_timeout {KEEPALIVE_TIMEOUT_S}s;\n    }}\n"
    )


def address(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.path not in ("", "/") or not parts.hostname:
        raise UserError(f"the nginx router proxies to http://host:port endpoints without a path; {url!r} is not one")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port or 80}"


PROXY = """\
            proxy_pass http://$expert_upstream;
            proxy_http_version 1.1;                  # keep-alive and chunked streaming upstream
            proxy_set_header Connection "";
            proxy_buffering off;                     # relay each SSE chunk at once
            proxy_connect_timeout {connect};
            proxy_read_timeout {read};               # the longer of the first-token and idle timeouts
            proxy_send_timeout {read};
            proxy_next_upstream off;                 # one server an upstream: the Lua picks the next replica
            proxy_intercept_errors on;               # a replica's 5xx goes to @fallback, as its failure does
            error_page 500 502 503 504 = @fallback;  # another replica, then the next expert, before any byte
{client_errors}            add_header X-Expert-Cluster $expert_cluster always;
            add_header X-Expert-Model $expert_model always;
            add_header X-Expert-Routed-Cluster $expert_routed always;
            log_by_lua_block {{ router.done() }}
"""
ROUTE = """\
            set $expert_upstream "";
            set $expert_cluster "";
            set $expert_model "";
            set $expert_routed "";
            set $expert_order "";                    # the clusters left to fail over to, nearest first
            set $expert_admitted "";                 # the cluster whose slot this request holds
            set $expert_lease "";                    # its lease on that slot (limit_scope: shared)
            set $expert_replica "";                  # the replica it was sent to last
            set $expert_tried "";                    # every replica it was sent to
"""

TEMPLATE = """\
# Written by `expert-router nginx-router`: nginx relays every stream, router/route.lua picks the expert.
# Run: nginx -p "$PWD/<this folder>" -c nginx.conf -g 'daemon off;'
load_module {ndk};
load_module {lua};
worker_processes {workers};
pid nginx.pid;
error_log error.log warn;

events {{
    worker_connections 8192;
}}

http {{
    access_log off;
    client_body_temp_path client_body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
    client_max_body_size {max_body};
    client_body_buffer_size {max_body};          # the whole body in memory, where the router reads it
    lua_package_path "{lua_path};";
    lua_package_cpath "{cjson_dir}/?.so;;";
    init_by_lua_block {{
        router = require "route"
        router.load("{router}")
    }}
    init_worker_by_lua_block {{ router.start_worker() }}
    lua_check_client_abort on;                   # a client that hangs up while queued leaves the queue (499)
    lua_socket_log_errors off;                   # a dead replica's load read is no error.log line each interval
    lua_shared_dict expert_router 1m;            # requests in flight per expert and the counts, all workers

{upstreams}
    server {{
        listen {host}:{port};
        recursive_error_pages on;                    # @fallback's own failure falls back again (nginx counts
                                                     # the error_page from the first location's setting)
{client_errors}
        location = /v1/completions {{
{route}            rewrite_by_lua_block {{ router.route(false) }}
{proxy}        }}

        location = /v1/chat/completions {{
{route}            rewrite_by_lua_block {{ router.route(true) }}
{proxy}        }}

        location @fallback {{
            rewrite_by_lua_block {{ router.fall_back() }}
{proxy}        }}

        location = /metrics {{
            content_by_lua_block {{ router.metrics() }}
        }}

        location = /v1/models {{
            content_by_lua_block {{ router.models() }}
        }}

        location = /health {{
            content_by_lua_block {{ router.health() }}
        }}

        location / {{
            content_by_lua_block {{ router.not_found() }}
        }}

{error_pages}    }}
}}
"""
