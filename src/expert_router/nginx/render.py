"""A deployment as an nginx configuration with the Lua router, and the classifier as files Lua reads.

The exported arrays are `Classifier`'s own routing rows (each vocabulary term's idf-weighted SVD
projection followed by its k centroid products, float32) and the centroids' squared norms, so Lua
sums exactly what the Python gateway sums. Only l2 scaling (c-BTM's, the default) has that fast path;
a classifier fitted with standard scaling is refused.
"""

from __future__ import annotations

import glob
import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from expert_router.classifier import Classifier
from expert_router.config import Deployment, check_against_classifier
from expert_router.errors import UserError

MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules", "/etc/nginx/modules")
"""Where distributions put nginx's dynamic modules (Debian's libnginx-mod-http-lua: the first)."""
CJSON_GLOBS = ("/usr/lib/*/lua/5.1/cjson.so", "/usr/local/lib/lua/5.1/cjson.so", "/usr/lib/lua/5.1/cjson.so")
"""Where lua-cjson's module for Lua 5.1 (LuaJIT's ABI) is installed."""
PACKAGES = "libnginx-mod-http-lua lua-cjson"
"""The Debian packages that provide both."""


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: str = "auto"


def write(deployment: Deployment, classifier: Classifier, out: Path, listen: Listen) -> Path:
    """Write `out/nginx.conf`, `out/router/` (route.lua and the classifier's arrays); returns the config."""
    check_against_classifier(deployment, classifier.k)
    if classifier.scale_mean is not None:
        raise UserError(
            "the nginx router needs a classifier fitted with l2 scaling (c-BTM's, the default); "
            "this one uses standard scaling: fit it again without --scaling standard"
        )
    modules, cjson = lua_modules(), cjson_module()
    router = out / "router"
    router.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(str(resources.files("expert_router.nginx").joinpath("route.lua")), router / "route.lua")
    export_classifier(deployment, classifier, router)
    config = out / "nginx.conf"
    config.write_text(render_config(deployment, router.resolve(), modules, cjson, listen))
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (out / name).mkdir(exist_ok=True)
    return config


def export_classifier(deployment: Deployment, classifier: Classifier, router: Path) -> None:
    """vocabulary.txt (a term per line, row order), rows.f32 and router.json (sizes, norms, experts)."""
    rows, centroid_sq = classifier.routing_rows()
    (router / "vocabulary.txt").write_text("\n".join(classifier.vocabulary) + "\n", encoding="utf-8")
    rows.astype("<f4").tofile(router / "rows.f32")
    meta = {
        "dims": int(classifier.projection.shape[1]),
        "k": classifier.k,
        "centroid_sq": centroid_sq,
        "model_name": deployment.gateway.model_name,
        "max_inflight": deployment.gateway.max_inflight_per_expert,
        "experts": {
            str(e.cluster): {"model": e.model, "upstream": upstream_name(e.cluster)} for e in deployment.experts
        },
    }
    (router / "router.json").write_text(json.dumps(meta))


def upstream_name(cluster: int) -> str:
    return f"expert_{cluster}"


def render_config(deployment: Deployment, router: Path, modules: Path, cjson: Path, listen: Listen) -> str:
    settings = deployment.gateway
    upstreams = "".join(_upstream(e.cluster, e.base_urls(), settings.failures_to_down) for e in deployment.experts)
    read_timeout = max(settings.first_token_timeout_s, settings.idle_timeout_s)
    return TEMPLATE.format(
        ndk=modules / "ndk_http_module.so",
        lua=modules / "ngx_http_lua_module.so",
        workers=listen.workers,
        max_body=settings.max_body_bytes,
        router=router,
        cjson_dir=cjson.parent,
        upstreams=upstreams,
        host=listen.host,
        port=listen.port,
        proxy=PROXY.format(
            connect=f"{settings.connect_timeout_s:g}s",
            read=f"{read_timeout:g}s",
            tries=settings.max_attempts,
            limit=LIMIT.format(max_inflight=settings.max_inflight_per_expert)
            if settings.max_inflight_per_expert <= NGINX_MAX_LIMIT
            else "",
        ),
    )


def _upstream(cluster: int, urls: list[str], max_fails: int) -> str:
    servers = "".join(f"        server {_address(url)} max_fails={max_fails} fail_timeout=10s;\n" for url in urls)
    return f"    upstream {upstream_name(cluster)} {{\n        least_conn;\n{servers}        keepalive 256;\n    }}\n"


def _address(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.path not in ("", "/") or not parts.hostname:
        raise UserError(f"the nginx router proxies to http://host:port endpoints without a path; {url!r} is not one")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port or 80}"


def lua_modules() -> Path:
    for directory in MODULE_DIRS:
        if (Path(directory) / "ngx_http_lua_module.so").is_file():
            return Path(directory)
    raise UserError(f"nginx's Lua module is not installed (Debian/Ubuntu: apt-get install {PACKAGES})")


def cjson_module() -> Path:
    for pattern in CJSON_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    raise UserError(f"lua-cjson for Lua 5.1 is not installed (Debian/Ubuntu: apt-get install {PACKAGES})")


PROXY = """\
            proxy_pass http://$expert_upstream;
            proxy_http_version 1.1;                  # keep-alive and chunked streaming upstream
            proxy_set_header Connection "";
            proxy_buffering off;                     # relay each SSE chunk at once
            proxy_connect_timeout {connect};
            proxy_read_timeout {read};               # the longer of the first-token and idle timeouts
            proxy_send_timeout {read};
            proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;  # before any byte
            proxy_next_upstream_tries {tries};
            add_header X-Expert-Cluster $expert_cluster always;
            add_header X-Expert-Model $expert_model always;
{limit}            error_page 429 = @saturated;
"""
LIMIT = "            limit_conn expert_inflight {max_inflight};    # counted once the router has set the expert\n"
NGINX_MAX_LIMIT = 65535
"""The largest limit_conn nginx accepts: a max_inflight_per_expert above it sets none (nginx refused to start)."""

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
    lua_package_path "{router}/?.lua;;";
    lua_package_cpath "{cjson_dir}/?.so;;";
    init_by_lua_block {{
        router = require "route"
        router.load("{router}")
    }}
    limit_conn_zone $expert_upstream zone=expert_inflight:1m;  # requests in flight per expert, all workers
    limit_conn_status 429;

{upstreams}
    server {{
        listen {host}:{port};

        location = /v1/completions {{
            set $expert_upstream "";
            set $expert_cluster "";
            set $expert_model "";
            rewrite_by_lua_block {{ router.route(false) }}
{proxy}        }}

        location = /v1/chat/completions {{
            set $expert_upstream "";
            set $expert_cluster "";
            set $expert_model "";
            rewrite_by_lua_block {{ router.route(true) }}
{proxy}        }}

        location @saturated {{
            content_by_lua_block {{ router.saturated() }}
        }}

        location = /v1/models {{
            content_by_lua_block {{ router.models() }}
        }}

        location = /health {{
            default_type application/json;
            return 200 '{{"status":"ok"}}';
        }}

        location / {{
            content_by_lua_block {{ router.not_found() }}
        }}
    }}
}}
"""
