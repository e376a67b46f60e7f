"""The drain middleware in process: what a draining server answers, and its count of requests in flight."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from expert_router.http import DRAIN_KEY, Drain, drain_middleware


def app_with(release: asyncio.Event) -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"done": True})

    app = web.Application(middlewares=[drain_middleware])
    app[DRAIN_KEY] = Drain()
    app.router.add_get("/health", ok)
    app.router.add_get("/metrics", ok)
    app.router.add_post("/v1/completions", slow)
    return app


def test_requests_in_flight_are_counted_and_draining_turns_new_ones_away():
    async def scenario() -> None:
        release = asyncio.Event()
        app = app_with(release)
        drain = app[DRAIN_KEY]
        async with TestClient(TestServer(app)) as client:
            pending = asyncio.ensure_future(client.post("/v1/completions", json={}))
            while drain.inflight == 0:
                await asyncio.sleep(0.01)
            assert not drain.idle.is_set()
            drain.draining = True
            health = await client.get("/health")
            assert health.status == 503 and await health.json() == {"status": "draining"}
            assert health.headers["Connection"] == "close"
            refused = await client.post("/v1/completions", json={})
            error = (await refused.json())["error"]
            assert refused.status == 503 and "shutting down" in error["message"]
            assert (await client.get("/metrics")).status == 200  # a last scrape still works
            release.set()
            finished = await pending
            assert finished.status == 200 and await finished.json() == {"done": True}
            assert drain.inflight == 0 and drain.idle.is_set()

    asyncio.run(scenario())


def test_a_new_drain_is_idle():
    drain = Drain()
    assert drain.idle.is_set() and not drain.draining and drain.inflight == 0
