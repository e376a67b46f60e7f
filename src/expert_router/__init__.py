"""Expert Router: serve several specialised LLMs behind one endpoint and measure it under load.

The public API, for use from Python (the CLI is `expert-router`):

- the classifier: `Classifier` (fit, save, load, route), `ClassifierSettings`, `Routes`;
- deployments and the gateway: `Deployment`, `load_deployment`, `build_app` (the gateway app;
  `expert_router.gateway.listen.serve_until_stopped` serves it);
- the user simulator: `WorkloadSpec`, `draw_workload`, `WorkItem`, `RunSettings`;
- records and metrics: `RequestRecord`, `read_records`, `summarize`;
- errors: `ExpertRouterError`, `UserError`, `ClientError`, `BadRequest` (see `expert_router.errors`).

Names are loaded on first use, so `import expert_router` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    "Classifier": "expert_router.classifier",
    "ClassifierSettings": "expert_router.classifier",
    "Routes": "expert_router.classifier",
    "Deployment": "expert_router.config",
    "load_deployment": "expert_router.config",
    "build_app": "expert_router.gateway",
    "WorkloadSpec": "expert_router.loadgen.workload",
    "draw_workload": "expert_router.loadgen.workload",
    "WorkItem": "expert_router.loadgen.workload",
    "RunSettings": "expert_router.loadgen.users",
    "RequestRecord": "expert_router.loadgen.records",
    "read_records": "expert_router.loadgen.records",
    "summarize": "expert_router.analysis.digest",
    "ExpertRouterError": "expert_router.errors",
    "UserError": "expert_router.errors",
    "ClientError": "expert_router.errors",
    "BadRequest": "expert_router.errors",
}
__all__ = [
    "BadRequest",
    "Classifier",
    "ClassifierSettings",
    "ClientError",
    "Deployment",
    "ExpertRouterError",
    "RequestRecord",
    "Routes",
    "RunSettings",
    "UserError",
    "WorkItem",
    "WorkloadSpec",
    "__version__",
    "build_app",
    "draw_workload",
    "load_deployment",
    "read_records",
    "summarize",
]

if TYPE_CHECKING:
    from expert_router.analysis.digest import summarize
    from expert_router.classifier import Classifier, ClassifierSettings, Routes
    from expert_router.config import Deployment, load_deployment
    from expert_router.errors import BadRequest, ClientError, ExpertRouterError, UserError
    from expert_router.gateway import build_app
    from expert_router.loadgen.records import RequestRecord, read_records
    from expert_router.loadgen.users import RunSettings
    from expert_router.loadgen.workload import WorkItem, WorkloadSpec, draw_workload


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'expert_router' has no attribute {name!r}")
