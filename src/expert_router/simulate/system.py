"""One configuration of an experiment as a simulated system: its emulated engines, and how requests reach them.

Read from the very experiment file a real run uses: every `expert-router emulate ...` service becomes its
engines (parsed by the emulator's own option parser), an `expert-router serve DEPLOYMENT` service makes
the configuration a router (cluster -> expert model -> the engines on that expert's endpoint ports, the
least busy replica first, as the gateway's pool picks), and a configuration without a gateway sends to the
engine on its URL's port, or round robin over every engine serving its model (nginx in front of replicas).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from expert_router.config import load_deployment
from expert_router.emulate.options import parse_command
from expert_router.errors import UserError
from expert_router.experiment_file import Configuration
from expert_router.gateway.options import serve_arguments
from expert_router.loadgen.records import RequestRecord
from expert_router.simulate.engines import VirtualEngine
from expert_router.simulate.events import EventQueue

DEFAULT_GATEWAY_MS = (0.8, 0.2)
"""The gateway's added time to first token measured on the 2-core development machine (bench/gateway.py,
one stream: p50 0.8 ms, p99 1.0 ms): routing work plus the second HTTP hop. Not the paper's 442 ms, which
came from its 16-gateway NGINX set-up; pass `--gateway-ms 442 302` to simulate that one."""


@dataclass(frozen=True)
class GatewayOverhead:
    """Time a request spends in the gateway before it reaches an engine: drawn from measured `samples`
    (seconds) when there are some, else normal(mean, std) clipped at zero."""

    mean_s: float = 0.0
    std_s: float = 0.0
    samples: tuple[float, ...] = ()

    def draw(self, rng: np.random.Generator) -> float:
        if self.samples:
            return self.samples[int(rng.integers(len(self.samples)))]
        return max(0.0, float(rng.normal(self.mean_s, self.std_s))) if self.std_s else self.mean_s

    @classmethod
    def measured(cls, records: list[RequestRecord]) -> GatewayOverhead:
        """The Server-Timing `route` values of a real run's records (what the gateway reported spending)."""
        samples = tuple(r.server_timing["route"] for r in records if "route" in r.server_timing)
        if not samples:
            raise UserError("these records carry no Server-Timing route values: were they run through the gateway?")
        return cls(float(np.mean(samples)), float(np.std(samples)), samples)


class System:
    def __init__(self, configuration: Configuration, base: Path, events: EventQueue, seed: int = 0):
        self.name = configuration.name
        self.model = configuration.model
        self.engines: dict[int, VirtualEngine] = {}  # by port
        self._names: dict[int, tuple[str, ...]] = {}
        self._routes: dict[int, tuple[str, list[int]]] | None = None
        self._inflight: dict[int, int] = {}
        for service in configuration.services:
            argv = service.argv()
            if "emulate" in argv:
                self._add_engines(argv, events, seed)
            elif (serve := serve_arguments(argv)) is not None:
                self._routes = self._read_deployment(base / serve.deployment)
        if not self.engines:
            raise UserError(f"configuration {self.name}: no `expert-router emulate` service to simulate")
        self._round_robin = itertools.cycle(sorted(self.engines))
        self._url_port = urlsplit(configuration.url).port

    @property
    def routed(self) -> bool:
        return self._routes is not None

    def _add_engines(self, argv: list[str], events: EventQueue, seed: int) -> None:
        instances, _ = parse_command(argv)  # time dilation is for real time only
        for instance in instances:
            config = replace(instance.config, seed=instance.config.seed + 1000 * seed)
            self.engines[instance.port] = VirtualEngine(config, events, instance.names[0])
            self._names[instance.port] = instance.names
            self._inflight[instance.port] = 0

    def _read_deployment(self, path: Path) -> dict[int, tuple[str, list[int]]]:
        deployment = load_deployment(path)
        routes = {}
        for expert in deployment.experts:
            ports = [p for p in (urlsplit(u).port for u in expert.base_urls()) if p is not None]
            routes[expert.cluster] = (expert.model, ports)
        return routes

    def pick(self, cluster: int | None) -> tuple[int, str]:
        """The engine port and model name a request goes to."""
        if self._routes is not None:
            if cluster not in self._routes:
                raise UserError(f"configuration {self.name}: no expert for cluster {cluster}")
            model, ports = self._routes[cluster]
            live = [p for p in ports if p in self.engines]
            if not live:
                raise UserError(f"configuration {self.name}: expert {model}'s endpoints are no emulated engine")
            port = min(live, key=lambda p: self._inflight[p])  # least outstanding, as the gateway's pool
            return port, model
        if self._url_port in self.engines:
            port = self._url_port
        else:
            port = next(self._round_robin)  # nginx round robin over the replicas
        return port, self.model or self._names[port][0]

    def started(self, port: int) -> None:
        self._inflight[port] += 1

    def finished(self, port: int) -> None:
        self._inflight[port] -= 1
