"""Engine kinds: what `experts serve` starts for a deployment, and what each kind needs, in one place.

A small registry (guidellm keeps its backends the same way): `KINDS[name]` checks a deployment and
plans its server processes. Adding an engine (SGLang, TGI) is one class here and one name in
`EngineSettings.kind`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

from expert_router.config import Deployment, is_hub_name
from expert_router.engine.serve import ServerProcess, host_port, vllm_argv
from expert_router.errors import UserError


class EngineKind(ABC):
    @abstractmethod
    def problems(self, deployment: Deployment) -> list[str]:
        """What is missing for this kind, each line naming the key."""

    @abstractmethod
    def servers(self, deployment: Deployment, logs: Path) -> list[ServerProcess]:
        """The server processes to start, each with the expert models it must list when ready."""


class External(EngineKind):
    """Nothing is started: the endpoints are servers someone else runs (GPU vLLM, SGLang, TGI, Triton)."""

    def problems(self, deployment: Deployment) -> list[str]:
        return []

    def servers(self, deployment: Deployment, logs: Path) -> list[ServerProcess]:
        by_url: dict[str, list[str]] = {}
        for expert in deployment.experts:
            for url in expert.base_urls():
                by_url.setdefault(url, []).append(expert.model)
        return [
            ServerProcess(f"external-{i}", url, models, [], logs / "none.log")
            for i, (url, models) in enumerate(by_url.items())
        ]


class VllmLora(EngineKind):
    """One vLLM server: `engine.base_model` plus every expert's LoRA `adapter`."""

    def problems(self, deployment: Deployment) -> list[str]:
        engine, problems = deployment.engine, []
        if engine.base_model is None:
            problems.append("engine.base_model: required for kind vllm-lora")
        elif not is_hub_name(engine.base_model) and not engine.base_model.exists():
            problems.append(f"engine.base_model: {engine.base_model} does not exist")
        for i, expert in enumerate(deployment.experts):
            if expert.adapter is None:
                problems.append(f"experts.{i}.adapter: required for kind vllm-lora ({expert.model})")
            elif not (expert.adapter / "adapter_config.json").is_file():
                problems.append(
                    f"experts.{i}.adapter: {expert.adapter} is not a LoRA adapter folder "
                    f"(no adapter_config.json) ({expert.model})"
                )
        ports = {e.base_urls()[0] for e in deployment.experts}
        if len(ports) != 1 or any(len(e.endpoints) != 1 for e in deployment.experts):
            problems.append(
                "experts.*.endpoints: kind vllm-lora serves every expert from one server: "
                "give all experts the same single endpoint"
            )
        return problems

    def servers(self, deployment: Deployment, logs: Path) -> list[ServerProcess]:
        engine = deployment.engine
        url = deployment.experts[0].base_urls()[0]
        host, port = host_port(url)
        argv = vllm_argv(engine.base_model, port, host, deployment, ["base"])
        argv += [
            "--enable-lora",
            "--max-loras",
            str(len(deployment.experts)),
            "--max-lora-rank",
            str(engine.max_lora_rank),
            "--lora-modules",  # JSON: vLLM reads an item holding a comma as JSON, so name=path broke on one
            *[json.dumps({"name": e.model, "path": str(e.adapter)}) for e in deployment.experts],
        ]
        return [ServerProcess("vllm-lora", url, [e.model for e in deployment.experts], argv, logs / "vllm-lora.log")]


class VllmPerExpert(EngineKind):
    """One vLLM server per expert, each with its own `model_path`, on its endpoint's port (the paper's layout)."""

    def problems(self, deployment: Deployment) -> list[str]:
        problems = []
        for i, expert in enumerate(deployment.experts):
            if expert.model_path is None:
                problems.append(f"experts.{i}.model_path: required for kind vllm ({expert.model})")
            elif not is_hub_name(expert.model_path) and not expert.model_path.exists():
                problems.append(f"experts.{i}.model_path: {expert.model_path} does not exist ({expert.model})")
            if len(expert.endpoints) != 1:
                problems.append(f"experts.{i}.endpoints: kind vllm starts one server per expert: give one endpoint")
        return problems

    def servers(self, deployment: Deployment, logs: Path) -> list[ServerProcess]:
        servers = []
        for expert in deployment.experts:
            url = expert.base_urls()[0]
            host, port = host_port(url)
            servers.append(
                ServerProcess(
                    expert.model,
                    url,
                    [expert.model],
                    vllm_argv(expert.model_path, port, host, deployment, [expert.model]),
                    logs / f"{expert.model}.log",
                    env=expert.env,
                )
            )
        return servers


KINDS: dict[str, EngineKind] = {"external": External(), "vllm-lora": VllmLora(), "vllm": VllmPerExpert()}


def kind_of(deployment: Deployment) -> EngineKind:
    return KINDS[deployment.engine.kind]


def check_engine(deployment: Deployment, source: str = "deployment") -> None:
    """What `experts serve` needs: every adapter or model it must load, named when missing."""
    problems = kind_of(deployment).problems(deployment)
    if problems:
        raise UserError(f"{source} cannot be served:\n" + "\n".join(f"  {p}" for p in problems))
