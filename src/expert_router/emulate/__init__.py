"""An emulated GPU inference engine: continuous batching, a paged KV cache, a roofline performance model.

The spine (`Engine.step`: schedule -> step time -> emit tokens) knows no clock; `RealtimeDriver` runs it
against the wall clock behind an OpenAI-compatible server, and validation runs it in virtual time.
"""

from expert_router.emulate.config import EngineConfig, build_config
from expert_router.emulate.engine import Engine, StepResult, TokenEvent
from expert_router.emulate.launch import Instance, plan, serve
from expert_router.emulate.perfmodel import Iteration, PerfModel, StepTime
from expert_router.emulate.realtime import RealtimeDriver, scale_times
from expert_router.emulate.scheduler import Scheduler, Sequence

__all__ = [
    "Engine",
    "EngineConfig",
    "Instance",
    "Iteration",
    "PerfModel",
    "RealtimeDriver",
    "Scheduler",
    "Sequence",
    "StepResult",
    "StepTime",
    "TokenEvent",
    "build_config",
    "plan",
    "scale_times",
    "serve",
]
