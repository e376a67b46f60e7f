"""CPython's garbage collector, set for a long-running server: start-up objects frozen, young collections rare.

Used by the gateway (`serve`) and the emulated engine (`emulate`), whose timelines a collection pause
would shift; the load generator does the same around a run (`loadgen.users`).

Profiled under load (`bench/gateway.py`'s 500 and 1,000 streams of 32 tokens; py-spy, and
`gc.callbacks` timing every collection), CPython's default thresholds (700, 10, 10) cost the gateway
about a sixth of its CPU, and their full collections were its tail: each walked the ~210,000 objects
left from start-up (the classifier, aiohttp, numpy, pydantic) and held the event loop 100-400 ms every
few seconds, while the requests in flight survived two young collections and were promoted to be walked
again. Yet the gateway makes almost no cyclic garbage (none was collected in 20 s of load): its
objects die by reference count. So, once started, the gateway freezes what is alive (`gc.freeze()`:
never walked again) and collects the young generation every `YOUNG` net allocations instead of 700.
Measured the same way, the collector's share fell from ~1.2-3 s to ~0.05 s per 20 s of load, and
CPU per request by ~17% in those runs. Cycles are still collected, only less often.

That holds only while requests leave no cycles. A later relay did (relay and idle watchdog referring to
each other): ~12 objects a stream request for the young collections, found with `gc.callbacks` and
`DEBUG_SAVEALL` at 2-token answers on 50 streams: 373,000 objects collected in 9 collections of ~25 ms
each, ~4% of the gateway's CPU. A unit test now checks that a finished stream is freed by reference
counting alone; after the fix the same load ran with no young collection at all. Every closed
connection was a cycle too (its llhttp parser holds its callbacks), one per request for clients that do
not keep connections alive (4,000 such requests left ~12 objects each); a closed connection now drops
its parser, and unit tests check that server and client connections are freed without the collector.
"""

from __future__ import annotations

import gc

YOUNG = 50_000
"""Net allocations of tracked objects between two young collections (CPython's default: 700)."""


def settle_after_start_up() -> None:
    """Collect once, freeze everything alive, and raise the young threshold. Call once start-up is done."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, 10, 10)
