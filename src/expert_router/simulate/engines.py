"""An emulated engine on the virtual clock: the same `Engine.step()` the real-time server drives.

Timeline rules are the real-time driver's (`emulate/realtime.py`): a step starts when the previous one
ends, or when a request reaches an idle engine; its tokens are delivered at its end; requests that arrive
during a step join at the next one.

One event per engine step, not per token: a step's tokens all arrive at its end. When the engine keeps
its decoders as a group (`emulate/decoding.py`: each running request gets one token per step, from its
first to its last), a step costs no work per token at all: the engine's step end times form one timeline,
and a request's token times are the slice of it from its first token's step to its last, copied into the
record's `chunk_times` when it finishes. Otherwise (a policy that preempts) each step's end is appended
to each of its tokens' requests. Either way only requests that start or finish are called back.
"""

from __future__ import annotations

from collections.abc import Callable

from expert_router.emulate.config import EngineConfig
from expert_router.emulate.engine import Engine, StepResult
from expert_router.simulate.events import EventQueue

OnFinish = Callable[[str, float], None]
"""Called with a request's finish reason and the time its last token is delivered."""


class VirtualEngine:
    def __init__(self, config: EngineConfig, events: EventQueue, name: str = ""):
        self.engine = Engine(config)
        self.events = events
        self.name = name
        self._times: dict[int, list[float]] = {}
        self._on_finish: dict[int, OnFinish] = {}
        self._stepping = False
        self._grouped = self.engine.grouped
        self._timeline: list[float] = []
        """End time of every step, when grouped."""
        self._first: dict[int, int] = {}
        """Timeline index of each running request's first token, when grouped."""

    def submit(
        self,
        request_id: int,
        prompt_tokens: int,
        max_tokens: int,
        times: list[float],
        on_finish: OnFinish,
        ignore_eos: bool = False,
    ) -> None:
        """The request reaches the engine now (raises UserError if it can never fit). Each of its tokens'
        delivery times is appended to `times`; `on_finish` hears of its end."""
        self.engine.submit(request_id, prompt_tokens, max_tokens, ignore_eos)
        self._times[request_id] = times
        self._on_finish[request_id] = on_finish
        if not self._stepping:
            self._stepping = True
            self._step()

    def _step(self) -> None:
        result = self.engine.step(events=not self._grouped)
        if result is None:
            self._stepping = False  # idle until the next request
            return
        self.events.after(result.duration, lambda: self._deliver(result))

    def _deliver(self, result: StepResult) -> None:
        # the next step is scheduled before anyone hears of these tokens, as the real-time driver does:
        # a request sent in reaction to them reaches the engine after that step has started
        self._step()
        now = self.events.now
        times = self._times
        if self._grouped:
            index = len(self._timeline)
            self._timeline.append(now)
            for request_id in result.started:
                self._first[request_id] = index
            for request_id, _ in result.finished:
                times[request_id].extend(self._timeline[self._first.pop(request_id) : index + 1])
        else:
            for event in result.events:
                times[event.request_id].append(now)
        for request_id, reason in result.finished:
            del times[request_id]
            self._on_finish.pop(request_id)(reason, now)
