"""Users in virtual time: the user simulator's behaviour (closed loop, or open loop with Poisson
arrivals) over the same workload, producing the same `RequestRecord`s as `expert-router load`.

Closed loop: N users start at time 0; each sends its next request the moment its answer ends, until the
duration is over (requests in flight then still finish). Open loop: arrivals on a Poisson schedule fixed
up front, every arrival a user of its own. Requests take workload items in turn, cycling, as
`loadgen/users.py` hands them out.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from expert_router.errors import UserError
from expert_router.loadgen.records import RequestRecord
from expert_router.loadgen.workload import WorkItem
from expert_router.simulate.events import EventQueue
from expert_router.simulate.system import GatewayOverhead, System


@dataclass(frozen=True)
class Load:
    users: int = 1
    duration_s: float = 60.0
    mode: str = "closed"
    rate: float | None = None
    ignore_eos: bool = False


class Users:
    def __init__(
        self,
        system: System,
        events: EventQueue,
        items: Sequence[WorkItem],
        routes: Sequence[int],
        overhead: GatewayOverhead,
        seed: int = 0,
    ):
        """`routes[i]` is the cluster the gateway's classifier gives item i's prompt."""
        self.system, self.events, self.items, self.routes = system, events, items, routes
        self.overhead = overhead
        self.records: list[RequestRecord] = []
        self._rng = np.random.default_rng(seed)
        self._cycle = itertools.cycle(range(len(items)))
        self._ids = itertools.count()
        self._words: dict[int, int] = {}
        """Prompt length per item as the emulated server counts it (words), counted once per item."""
        self._refused: tuple[float, int] = (-1.0, 0)
        """When the engine last refused a request, and how many in a row it refused at that instant."""

    def run(self, load: Load) -> list[RequestRecord]:
        self._load = load
        if load.mode == "closed":
            for user in range(load.users):
                self.events.at(0.0, functools.partial(self._send, user))
        else:
            if not load.rate or load.rate <= 0:
                raise UserError("open loop needs a positive rate")
            t = 0.0
            while True:
                t += float(self._rng.exponential(1 / load.rate))
                if t >= load.duration_s:
                    break
                self.events.at(t, lambda: self._send(None))
        self.events.run()
        return self.records

    def _send(self, user: int | None) -> None:
        now = self.events.now
        if now >= self._load.duration_s:
            return
        request_id = next(self._ids)
        index = next(self._cycle)
        item = self.items[index]
        record = RequestRecord(
            request_id=request_id,
            workload_id=item.id,
            user_id=request_id if user is None else user,
            cluster_drawn=item.cluster,
            prompt_tokens=item.input_tokens,
            max_tokens=item.max_tokens,
            t_scheduled=now,
            t_start=now,
        )
        self.records.append(record)
        cluster = self.routes[index] if self.system.routed else None
        port, model = self.system.pick(cluster)
        record.expert = model
        delay = 0.0
        if self.system.routed:
            record.cluster_routed = cluster
            delay = self.overhead.draw(self._rng)
            record.server_timing = {"route": delay}
        self.system.started(port)
        if index not in self._words:
            self._words[index] = len(item.prompt.split()) or 1
        prompt = self._words[index]
        self.events.after(delay, lambda: self._arrive(record, item, prompt, port, user))

    def _arrive(self, record: RequestRecord, item: WorkItem, prompt: int, port: int, user: int | None) -> None:
        engine = self.system.engines[port]

        def on_finish(reason: str, at: float) -> None:
            times = record.chunk_times  # filled by the engine, one delivery time per token
            record.chunk_tokens = [1] * len(times)  # the emulated engine streams one token per chunk
            record.output_tokens = len(times)
            record.token_source = "usage-continuous"
            record.t_first_token = times[0]
            self._done(record, reason, at, port, user)

        try:
            engine.submit(
                record.request_id, prompt, item.max_tokens, record.chunk_times, on_finish, self._load.ignore_eos
            )
        except UserError as exc:
            record.status, record.http_status, record.error = "http_error", 400, f"HTTP 400: {exc}"
            self._check_progress(exc)
            self._done(record, None, self.events.now, port, user)

    def _check_progress(self, refusal: UserError) -> None:
        """A closed-loop user sends again the moment a request is refused, and virtual time does not move
        for a refusal: once more requests than the workload has items are refused at one instant, every
        item is, and the run would go on for ever at that instant."""
        now = self.events.now
        at, count = self._refused
        count = count + 1 if at == now else 1
        self._refused = (now, count)
        if count > len(self.items) + self._load.users:
            raise UserError(f"the emulated engine refuses every request of this workload: {refusal}")

    def _done(self, record: RequestRecord, reason: str | None, at: float, port: int, user: int | None) -> None:
        record.t_end = at
        if reason is not None:
            record.finish_reason, record.http_status, record.usage_tokens = reason, 200, record.output_tokens
        self.system.finished(port)
        if user is not None:
            self._send(user)
