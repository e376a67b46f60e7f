"""A deployment as an nginx configuration with the Lua router, and the classifier as files Lua reads.

The exported arrays are `Classifier`'s own routing rows (each vocabulary term's idf-weighted SVD
projection followed by its k centroid products, float32) and the centroids' squared norms, so Lua
sums exactly what the Python gateway sums. Only l2 scaling (c-BTM's, the default) has that fast path;
a classifier fitted with standard scaling is refused.
"""

from __future__ import annotations

import glob
import hashlib
import json
import shutil
import socket
import sys
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from expert_router.api_request import CHAT_ROLES
from expert_router.classifier import Classifier
from expert_router.config import Deployment, GatewaySettings, check_against_classifier
from expert_router.errors import UserError
from expert_router.gateway.shared_limit import KEY_PREFIX, RENEW, TAKE
from expert_router.http import ERROR_TYPES
from expert_router.nginx.conf import Listen, address, render_config

MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules", "/etc/nginx/modules")
"""Where distributions put nginx's dynamic modules (Debian's libnginx-mod-http-lua: the first)."""
CJSON_GLOBS = ("/usr/lib/*/lua/5.1/cjson.so", "/usr/local/lib/lua/5.1/cjson.so", "/usr/lib/lua/5.1/cjson.so")
"""Where lua-cjson's module for Lua 5.1 (LuaJIT's ABI) is installed."""
PACKAGES = "libnginx-mod-http-lua lua-cjson"
"""The Debian packages that provide both."""
REDIS_MODULES = ("resty.redis", "nginx.redis")
"""lua-resty-redis, the Redis client for nginx's Lua, by OpenResty's name and by Debian's (lua-nginx-redis)."""
LUA_DIRS = ("/usr/share/lua/5.1", "/usr/local/share/lua/5.1", "/usr/local/openresty/lualib")
"""Where they are installed."""


def write(deployment: Deployment, classifier: Classifier, out: Path, listen: Listen) -> Path:
    """Write `out/nginx.conf`, `out/router/` (the Lua and the classifier's arrays); returns the config."""
    check_against_classifier(deployment, classifier.k)
    if classifier.scale_mean is not None:
        raise UserError(
            "the nginx router needs a classifier fitted with l2 scaling (c-BTM's, the default); "
            "this one uses standard scaling: fit it again without --scaling standard"
        )
    modules, cjson = lua_modules(), cjson_module()
    store = limit_store(deployment.gateway)
    router = out / "router"
    router.mkdir(parents=True, exist_ok=True)
    for name in ("route.lua", "limits.lua", "replicas.lua", "counts.lua", "decode.lua"):
        shutil.copyfile(str(resources.files("expert_router.nginx").joinpath(name)), router / name)
    export_classifier(deployment, classifier, router, store)
    config = out / "nginx.conf"
    lua_dirs = [router.resolve()] + ([Path(str(store["lua_dir"]))] if store else [])
    config.write_text(render_config(deployment, replica_names(deployment), lua_dirs, modules, cjson, listen))
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (out / name).mkdir(exist_ok=True)
    return config


def export_classifier(
    deployment: Deployment, classifier: Classifier, router: Path, store: dict[str, object] | None = None
) -> None:
    """vocabulary.txt (a term per line, row order), rows.f32 and router.json (sizes, norms, experts, and
    the shared limits' store where `limit_scope` is shared)."""
    rows, centroid_sq = classifier.routing_rows()
    (router / "vocabulary.txt").write_text("\n".join(classifier.vocabulary) + "\n", encoding="utf-8")
    rows.astype("<f4").tofile(router / "rows.f32")
    names = replica_names(deployment)
    health: dict[str, list[str]] = {}  # each replica's health paths: every expert's on it
    for expert in deployment.experts:
        for url in expert.base_urls():
            if expert.health_path not in health.setdefault(url, []):
                health[url].append(expert.health_path)
    settings = deployment.gateway
    meta = {
        "dims": int(classifier.projection.shape[1]),
        "k": classifier.k,
        "centroid_sq": centroid_sq,
        "error_types": {str(status): kind for status, kind in ERROR_TYPES.items()},
        "chat_roles": sorted(CHAT_ROLES),
        "lower_case": lower_case(),
        "model_name": deployment.gateway.model_name,
        "max_inflight": deployment.gateway.max_inflight_per_expert,
        "queue_timeout_s": deployment.gateway.queue_timeout_s,
        "fallback": deployment.gateway.fallback,
        "max_attempts": deployment.gateway.max_attempts,
        "max_body_bytes": settings.max_body_bytes,
        "failures_to_down": settings.failures_to_down,
        "fail_timeout_s": FAIL_TIMEOUT_S,
        "load_aware": settings.load_aware,
        "load_interval_s": settings.load_interval_s,
        "health_interval_s": settings.health_interval_s,
        "limit_store": store,
        "experts": {
            str(e.cluster): {
                "model": e.model,
                "replicas": [names[url] for url in e.base_urls()],
                "health_path": e.health_path,
            }
            for e in deployment.experts
        },
        "replicas": {name: {**_replica(url), "health": health[url]} for url, name in names.items()},
    }
    (router / "router.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")


def lower_case() -> dict[str, str]:
    """What str.lower, which the classifier's tokenizer calls, makes of each non-ASCII character it
    changes (~1,400 of them): the Lua lower-cases with it, as LuaJIT's string.lower changes ASCII only.
    Python's one context rule, a word-final capital sigma's 'ς', is the Lua's own (route.lua's FINAL_SIGMA)."""
    return {chr(c): chr(c).lower() for c in range(0x80, sys.maxunicode + 1) if chr(c).lower() != chr(c)}


FAIL_TIMEOUT_S = 10
"""How long after its last failure a replica that failed `failures_to_down` times in a row is passed over
at most (nginx's fail_timeout): a passed health check or an answer brings it back sooner, and failed
checks (every `health_interval_s`) keep it out."""


def _replica(url: str) -> dict[str, object]:
    """Where worker 0 reads the replica's /metrics."""
    address(url)  # refused here first: nothing is written for an endpoint nginx cannot proxy to
    parts = urlsplit(url)
    port = parts.port or 80
    host = _resolved(parts.hostname or "", port)
    return {"url": url, "host": host or parts.hostname, "port": port, "authority": parts.netloc, "resolved": bool(host)}


def _resolved(host: str, port: int) -> str | None:
    """`host` as an address: nginx's cosockets resolve no names without a `resolver`, so a name is
    resolved here, once, as nginx resolves an upstream's at its start. None when it does not resolve
    here (its replica is then neither checked nor read: requests alone judge it)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return None
    addresses = sorted(found, key=lambda entry: entry[0] != socket.AF_INET)  # IPv4 first
    if not addresses:
        return None
    address = str(addresses[0][4][0])
    return f"[{address}]" if addresses[0][0] == socket.AF_INET6 else address


def limit_store(settings: GatewaySettings) -> dict[str, object] | None:
    """Where `limit_scope: shared` keeps its leases, for route.lua: the gateway's own store, scripts, keys
    and lease term (`gateway.shared_limit`), so routers and gateways in front of one expert share its
    count. None where each nginx counts alone. The URL is read by redis-py, as the gateway reads it."""
    if settings.limit_scope != "shared":
        return None
    from redis.connection import parse_url

    url = settings.limit_store or ""
    if url.startswith("rediss://"):
        raise UserError(f"the nginx router reaches its limit store without TLS: use redis:// or unix://, not {url!r}")
    try:
        parts = parse_url(url)
    except ValueError as exc:
        raise UserError(f"limit_store {url!r} is not a Redis URL: {exc}") from None
    module, lua_dir = redis_module()
    if "path" in parts:
        where, host, port = f"unix:{parts['path']}", f"unix:{parts['path']}", None
    else:
        port = int(parts.get("port") or 6379)
        name = parts.get("host") or "localhost"
        where, host = f"{name}:{port}", _resolved(name, port) or name  # unresolved: the store is unreachable
    db = int(parts.get("db") or 0)
    return {
        "module": module,
        "lua_dir": str(lua_dir),
        "where": f"redis at {where}/{db}",  # no password: this is shown in errors and logs
        "host": host,
        "port": port,
        "db": db,
        "username": parts.get("username"),
        "password": parts.get("password"),
        "key_prefix": KEY_PREFIX,
        "lease_s": settings.lease_s,
        "take": TAKE,
        "take_sha": hashlib.sha1(TAKE.encode()).hexdigest(),
        "renew": RENEW,
        "renew_sha": hashlib.sha1(RENEW.encode()).hexdigest(),
    }


def replica_names(deployment: Deployment) -> dict[str, str]:
    """One nginx upstream per replica (base URL), shared by every expert it serves (LoRA adapters of one
    vLLM, or the benchmark's one server): nginx keeps idle connections per upstream, and with one
    upstream per expert, a connection freed by one expert's answer could not carry the next request for
    another expert on the same server, so nginx opened a new one (at 500 streams, 2-3x the connections
    nginx alone opened; each costs the expert an accept and the router a handshake). The Lua picks the
    replica, as the gateway does, so each upstream holds one server."""
    names: dict[str, str] = {}
    for expert in deployment.experts:
        for url in expert.base_urls():
            names.setdefault(url, f"replica_{len(names)}")
    return names


def lua_modules() -> Path:
    for directory in MODULE_DIRS:
        if (Path(directory) / "ngx_http_lua_module.so").is_file():
            return Path(directory)
    raise UserError(f"nginx's Lua module is not installed (Debian/Ubuntu: apt-get install {PACKAGES})")


def redis_module() -> tuple[str, Path]:
    """lua-resty-redis's module name and the folder it is under (needed by `limit_scope: shared` only)."""
    for directory in LUA_DIRS:
        for module in REDIS_MODULES:
            if (Path(directory) / (module.replace(".", "/") + ".lua")).is_file():
                return module, Path(directory)
    raise UserError(
        "limit_scope: shared needs lua-resty-redis in nginx's Lua (Debian/Ubuntu: apt-get install lua-nginx-redis)"
    )


def cjson_module() -> Path:
    for pattern in CJSON_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    raise UserError(f"lua-cjson for Lua 5.1 is not installed (Debian/Ubuntu: apt-get install {PACKAGES})")
