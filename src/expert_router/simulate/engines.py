"""An emulated engine on the virtual clock: the same `Engine.step()` the real-time server drives.

Timeline rules are the real-time driver's (`emulate/realtime.py`): a step starts when the previous one
ends, or when a request reaches an idle engine; its tokens are delivered at its end; requests that arrive
during a step join at the next one.
"""

from __future__ import annotations

from collections.abc import Callable

from expert_router.emulate.config import EngineConfig
from expert_router.emulate.engine import Engine, TokenEvent
from expert_router.simulate.events import EventQueue

OnToken = Callable[[TokenEvent, float], None]
"""Called with each token and its delivery time."""


class VirtualEngine:
    def __init__(self, config: EngineConfig, events: EventQueue, name: str = ""):
        self.engine = Engine(config)
        self.events = events
        self.name = name
        self._listeners: dict[int, OnToken] = {}
        self._stepping = False

    def submit(self, request_id: int, prompt_tokens: int, max_tokens: int, on_token: OnToken,
               ignore_eos: bool = False) -> None:
        """The request reaches the engine now (raises UserError if it can never fit)."""
        self.engine.submit(request_id, prompt_tokens, max_tokens, ignore_eos)
        self._listeners[request_id] = on_token
        if not self._stepping:
            self._stepping = True
            self._step()

    def _step(self) -> None:
        result = self.engine.step()
        if result is None:
            self._stepping = False  # idle until the next request
            return
        self.events.after(result.duration, lambda: self._deliver(result.events))

    def _deliver(self, tokens: list[TokenEvent]) -> None:
        # the next step is scheduled before anyone hears of these tokens, as the real-time driver does:
        # a request sent in reaction to them reaches the engine after that step has started
        self._step()
        now = self.events.now
        for event in tokens:
            listener = self._listeners[event.request_id]
            if event.finish_reason is not None:
                del self._listeners[event.request_id]
            listener(event, now)
