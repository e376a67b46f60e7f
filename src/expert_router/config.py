"""A deployment: which classifier routes, which expert serves each cluster, and the gateway's limits.

Read from YAML and validated with pydantic; every error names the key that is wrong. Relative paths
in the file are relative to the file itself, so a deployment folder can be moved as a whole.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from expert_router.errors import UserError


class Strict(BaseModel):
    """Every settings model of the project: an unknown key is an error, named, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ExpertConfig(Strict):
    """One expert: the cluster it serves and the replicas that serve it."""

    cluster: int = Field(ge=0)
    model: str = Field(min_length=1, description="model name sent upstream (a LoRA adapter name works too)")
    endpoints: list[HttpUrl] = Field(min_length=1, description="base URLs of the replicas, e.g. http://127.0.0.1:8100")
    protocol: Literal["openai"] = "openai"
    health_path: str = Field("/health", description="GET path that answers 200 when a replica is up")
    adapter: Path | None = Field(None, description="LoRA adapter folder (engine kind vllm-lora)")
    model_path: Path | None = Field(None, description="full model folder or hub name (engine kind vllm)")
    env: dict[str, str] = Field(
        {}, description="environment of this expert's server (engine kind vllm), e.g. CUDA_VISIBLE_DEVICES"
    )

    @field_validator("endpoints")
    @classmethod
    def _unique(cls, endpoints: list[HttpUrl]) -> list[HttpUrl]:
        if len({str(e) for e in endpoints}) != len(endpoints):
            raise ValueError("an endpoint is listed twice")
        for endpoint in endpoints:
            # Requests go to /v1/completions on the endpoint's host: a path (`http://host:8000/v1`) was
            # dropped from them but kept on health checks (/v1/health, a 404: every replica down).
            if endpoint.path not in (None, "", "/"):
                raise ValueError(f"{endpoint}: give the server's base URL, without a path (not /v1)")
        return endpoints

    @field_validator("health_path")
    @classmethod
    def _a_path(cls, path: str) -> str:
        if not path.startswith("/"):  # `health` made http://host:8100health: never up, every request a 503
            raise ValueError("must start with /, e.g. /health")
        if any(c.isspace() or not c.isprintable() for c in path):  # no request line carries it as written
            raise ValueError("must not hold spaces or control characters (percent-encode them)")
        return path

    @field_serializer("endpoints")
    def _as_written(self, endpoints: list[HttpUrl]) -> list[str]:
        """Written back as base URLs, without the slash pydantic adds (`url + "/v1"` must work)."""
        return self.base_urls()

    def base_urls(self) -> list[str]:
        return [str(e).rstrip("/") for e in self.endpoints]


class GatewaySettings(Strict):
    """Limits and timeouts of the gateway. CLI flags of `expert-router serve` override these."""

    model_name: str = Field("expert-router", min_length=1, description="the model name clients ask for to be routed")
    max_inflight_per_expert: int = Field(256, ge=1, description="requests in flight per expert before queueing")
    limit_scope: Literal["process", "shared"] = Field(
        "process",
        description="what max_inflight_per_expert counts: this process's requests, or every gateway's "
        "(shared: leases in the Redis server at limit_store; holds across workers and instances)",
    )
    limit_store: str | None = Field(
        None,
        pattern=r"^(redis|rediss|unix)://",
        description="the Redis server that counts shared limits, as redis://host:port/db (limit_scope: shared)",
    )
    lease_s: float = Field(
        30.0, ge=1, description="a shared slot held by a gateway that died is free again after this long"
    )
    load_aware: bool = Field(True, description="pick replicas by their own /metrics load report (vLLM's names)")
    load_interval_s: float = Field(0.25, gt=0, description="how often each replica's /metrics is read")
    queue_timeout_s: float = Field(5.0, ge=0, description="how long a request may wait for a slot before 429")
    connect_timeout_s: float = Field(5.0, gt=0)
    first_token_timeout_s: float = Field(120.0, gt=0, description="upstream silence allowed before the first token")
    idle_timeout_s: float = Field(60.0, gt=0, description="upstream silence allowed between tokens")
    request_timeout_s: float = Field(600.0, gt=0, description="whole non-streaming request")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    fallback: Literal["nearest", "none"] = Field("nearest", description="where a request goes when its expert is down")
    max_attempts: int = Field(3, ge=1, description="upstreams tried before the first token, fail-over included")
    health_interval_s: float = Field(2.0, gt=0)
    failures_to_down: int = Field(2, ge=1, description="consecutive failures that mark a replica down")
    drain_timeout_s: float = Field(30.0, ge=0, description="after SIGTERM: how long streams in flight may run on")

    @model_validator(mode="after")
    def _store_for_shared_limits(self) -> GatewaySettings:
        if self.limit_scope == "shared" and self.limit_store is None:
            raise ValueError(
                "limit_scope: shared needs limit_store, the Redis server that counts (redis://host:port/0)"
            )
        return self


LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The adapter ranks vLLM can serve (its `--max-lora-rank` choices)."""
LoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]


class EngineSettings(Strict):
    """What `expert-router experts serve` starts. The gateway ignores this section.

    `vllm-lora`: one vLLM server holding `base_model` and every expert's `adapter` (multi-LoRA).
    `vllm`: one vLLM server per expert, each with its own `model_path`, on its endpoint's port (the
    paper's layout). `external`: nothing is started; the endpoints are servers someone else runs.
    """

    kind: Literal["vllm-lora", "vllm", "external"] = "external"
    base_model: Path | None = Field(None, description="base model folder or hub name (kind vllm-lora)")
    max_lora_rank: LoraRank = 16
    max_model_len: int = Field(2048, ge=16)
    memory_fraction: float = Field(0.2, gt=0, le=1, description="vLLM --gpu-memory-utilization (CPU: RAM share)")
    extra_args: list[str] = Field([], description="more vLLM command-line arguments")
    ready_timeout_s: float = Field(600.0, gt=0)
    nice: int = Field(
        10,
        ge=0,
        le=19,
        description="CPU priority of the servers started here (0: the same as the gateway's; 19: the lowest)",
    )
    """On one machine the engine would take every core and starve the gateway and the load generator
    for seconds: their stamps and relays must be on time, an engine step can wait. Where they run on
    machines of their own, as in a real deployment, the setting changes nothing."""


class Deployment(Strict):
    classifier: Path = Field(description="folder of a saved classifier (`expert-router classifier fit`)")
    experts: list[ExpertConfig] = Field(min_length=1)
    gateway: GatewaySettings = GatewaySettings()
    engine: EngineSettings = EngineSettings()

    @model_validator(mode="after")
    def _one_expert_per_cluster(self) -> Deployment:
        clusters = [e.cluster for e in self.experts]
        duplicates = sorted({c for c in clusters if clusters.count(c) > 1})
        if duplicates:
            raise ValueError(f"clusters {duplicates} have more than one expert; list replicas under endpoints")
        if any(e.model == self.gateway.model_name for e in self.experts):  # it would be routed, never reached
            raise ValueError(f"an expert's model is named {self.gateway.model_name!r}, the gateway's own model_name")
        # One model may serve several clusters (same name, same endpoints). One name on different endpoints
        # is two models to the clusters but one to everything keyed by name: a client naming it reached one
        # of them only, and a shared limit counted both as one.
        endpoints: dict[str, set[str]] = {}
        for expert in self.experts:
            endpoints.setdefault(expert.model, set(expert.base_urls()))
            if endpoints[expert.model] != set(expert.base_urls()):
                raise ValueError(
                    f"experts named {expert.model!r} have different endpoints: give each model its own name "
                    "(the same name is for one model serving several clusters, at the same endpoints)"
                )
        return self

    def to_yaml(self) -> str:
        """The deployment as a file would hold it: defaults left out, paths as given."""
        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=True), sort_keys=False)

    def write(self, path: Path, comment: str = "") -> Path:
        """Write the deployment file; `comment` becomes its `# ` header lines."""
        header = "".join(f"# {line}\n" for line in comment.splitlines())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + self.to_yaml())
        return path


def describe_validation_error(exc: ValidationError, source: str, what: str = "deployment") -> str:
    """One line per problem, each naming the key path (experts.2.endpoints.0) and what is wrong."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        lines.append(f"  {where}: {message}")
    return f"{source} is not a valid {what}:\n" + "\n".join(lines)


def describe_flag_error(exc: ValidationError) -> str:
    """A settings error raised from command-line flags, named as the flag: `--max-tokens: ...`."""
    return "\n".join(
        f"--{str(error['loc'][0]).replace('_', '-')}: {error['msg']}"
        if error["loc"]
        else error["msg"].removeprefix("Value error, ")  # a check of several flags: its own words
        for error in exc.errors()
    )


def parse_deployment(data: object, source: str = "deployment", base: Path | None = None) -> Deployment:
    """Validate an already-parsed YAML document; relative paths are resolved against `base`."""
    if not isinstance(data, dict):
        raise UserError(f"{source} is not a valid deployment: expected a mapping with 'classifier' and 'experts'")
    try:
        deployment = Deployment.model_validate(data)
    except ValidationError as exc:
        raise UserError(describe_validation_error(exc, source)) from None
    if base is not None:
        deployment.classifier = (
            base / deployment.classifier if not deployment.classifier.is_absolute() else deployment.classifier
        )
        deployment.classifier = deployment.classifier.resolve()
        deployment.engine.base_model = _local_or_hub(base, deployment.engine.base_model)
        for expert in deployment.experts:
            expert.adapter = _resolve(base, expert.adapter)
            expert.model_path = _local_or_hub(base, expert.model_path)
    return deployment


HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
"""A model hub's name (`org/model`), as vLLM takes it in place of a folder."""


def is_hub_name(path: Path) -> bool:
    return not path.is_absolute() and HUB_NAME.fullmatch(str(path)) is not None


def _local_or_hub(base: Path, path: Path | None) -> Path | None:
    """A model: a folder, resolved against `base`, or a hub name (`org/model`) where no such folder
    exists there; kept as it is for the engine, which downloads it (on a machine that may). A name
    whose first part is a folder there (`experts/expert-0` beside an `experts` folder) is a folder
    that is missing, not a hub name: read as one, vLLM went to download it, and offline it failed
    minutes later in its own log instead of at once with the path."""
    if path is None or (is_hub_name(path) and not (base / path.parts[0]).is_dir()):
        return path
    return _resolve(base, path)


def _resolve(base: Path, path: Path | None) -> Path | None:
    return path if path is None or path.is_absolute() else (base / path).resolve()


def load_deployment(path: str | Path) -> Deployment:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"deployment file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None
    return parse_deployment(data, str(path), base=path.parent)


def check_against_classifier(deployment: Deployment, k: int, source: str = "deployment") -> None:
    """Every cluster of the classifier needs an expert, and no expert may name a cluster it lacks."""
    clusters = {e.cluster for e in deployment.experts}
    beyond = sorted(c for c in clusters if c >= k)
    if beyond:
        raise UserError(f"{source}: experts name clusters {beyond}, but the classifier has only k={k} (0..{k - 1})")
    missing = sorted(set(range(k)) - clusters)
    if missing and deployment.gateway.fallback == "none":
        raise UserError(f"{source}: clusters {missing} have no expert and gateway.fallback is 'none'")
