"""The gateway's routing decision inside nginx: nginx carries every stream, Lua classifies.

Why: the Python gateway pays an event-loop pass per hop and its HTTP exchange per request, which at
1,000 streams on a shared machine is most of what it adds over nginx (`bench/gateway.py`'s docstring,
eighth and ninth passes). Here nginx reads the request, `route.lua` (lua-nginx-module, LuaJIT)
classifies the prompt with the same arrays and arithmetic as `Classifier.rank`'s fast path and names
the expert's model in the body, and nginx relays the expert's answer itself.

What it keeps from the gateway: the same routing (the nearest centroid; a request naming an expert's
model goes to that expert), the model rename, OpenAI-style JSON errors for what it refuses, and
fail-over between an expert's replicas before the first byte (nginx's `proxy_next_upstream`), which
nginx picks by least connections, and `max_inflight_per_expert` as nginx's `limit_conn` on the chosen
expert (one count for all of this nginx's workers; a request past it gets 429 at once, where the
Python gateway queues it for `queue_timeout_s`). What it does not do: fail-over to the next-nearest
expert, limits shared between several nginx instances, load reports read from the replicas,
Server-Timing, Prometheus metrics, and gzip request bodies (415). Use the Python gateway
(`expert-router serve`) where those matter; this is for the many-streams, small-machine end.

`render` writes what nginx needs from a deployment: its configuration and the classifier's arrays.
"""
