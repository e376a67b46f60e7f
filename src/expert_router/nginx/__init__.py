"""The gateway's routing decision inside nginx: nginx carries every stream, Lua classifies.

Why: the Python gateway pays an event-loop pass per hop and its HTTP exchange per request, which at
1,000 streams on a shared machine is most of what it adds over nginx (`docs/gateway-performance.md`,
eighth and ninth passes). Here nginx reads the request, `route.lua` (lua-nginx-module, LuaJIT)
classifies the prompt with the same arrays and arithmetic as `Classifier.rank`'s fast path and names
the expert's model in the body, and nginx relays the expert's answer itself.

What it keeps from the gateway: the same routing (the nearest centroid; a request naming an expert's
model goes to that expert), the model rename, OpenAI-style JSON errors for what it refuses, the
replica picked by its own load report (read by worker 0 on `load_interval_s`) and this nginx's
requests in flight, fail-over before the first byte to another replica and then to the next-nearest
expert (`error_page` to a location where the Lua picks it), `max_inflight_per_expert` counted in a
shared dict by every worker of one nginx, or with `limit_scope: shared` as the gateway counts it (its
lease scripts on its keys in Redis, through lua-resty-redis), so routers and gateways share one limit,
with a request past it waiting `queue_timeout_s` for a slot (in arrival order, per worker) before its
429, Prometheus counts at /metrics with the gateway's names, and health checks of every replica
(worker 0, each `health_interval_s`), and compressed request bodies decoded as the gateway decodes them
(`decode.lua`). What it does not do: Server-Timing and latency histograms, and a limit store over TLS.
Use the Python gateway (`expert-router serve`) where those matter; this is for the many-streams,
small-machine end.

`render` writes what nginx needs from a deployment: its configuration and the classifier's arrays.
"""
