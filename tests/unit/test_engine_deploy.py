"""The engines `experts serve` starts, as a user's files and machine would have them: the GPU examples in
deploy/ (with stand-ins for what a build makes), LoRA ranks, ports, logs, signals and rebuilds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from expert_router.commands.experts import StopSignals
from expert_router.config import EngineSettings, load_deployment
from expert_router.engine.build import clear_previous_build, served_rank, write_deployments
from expert_router.engine.kinds import check_engine, kind_of
from expert_router.engine.serve import ServerProcess, start
from expert_router.errors import UserError
from expert_router.experiment_file import load_experiment
from expert_router.processes import wait_until

REPO = Path(__file__).parents[2]


def example(tmp_path: Path, name: str) -> Path:
    """deploy/NAME copied into a scratch tree, with a LoRA adapter stand-in where it expects a build's."""
    (tmp_path / "deploy").mkdir(parents=True)
    shutil.copy(REPO / "deploy" / name, tmp_path / "deploy" / name)
    for i in range(8):
        adapter = tmp_path / "artifacts" / "adapters" / f"expert-{i}"
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text("{}")
    return tmp_path / "deploy" / name


def test_the_multi_lora_gpu_example_serves_its_base_model_from_the_hub(tmp_path):
    """Its `base_model` (org/model) was read as a folder beside the file, and `experts serve` refused it."""
    path = example(tmp_path, "gpu-vllm-lora.yaml")
    deployment = load_deployment(path)
    check_engine(deployment, str(path))
    [server] = kind_of(deployment).servers(deployment, tmp_path / "logs")
    assert server.argv[server.argv.index("--model") + 1] == "meta-llama/Llama-2-7b-chat-hf"


def test_adapters_in_a_folder_whose_name_holds_a_comma_reach_vllm_whole(tmp_path):
    """`--lora-modules name=path`: vLLM reads an item that holds a comma as JSON (its LoRAParserAction),
    so an adapter under a folder like 'runs,2024' stopped vLLM at start. Each is JSON now."""
    path = example(tmp_path / "runs,2024", "gpu-vllm-lora.yaml")
    deployment = load_deployment(path)
    [server] = kind_of(deployment).servers(deployment, tmp_path / "logs")
    start = server.argv.index("--lora-modules") + 1
    modules = [json.loads(item) for item in server.argv[start : start + 8]]
    assert modules[3] == {
        "name": "expert-3",
        "path": str(tmp_path / "runs,2024" / "artifacts" / "adapters" / "expert-3"),
    }


def test_the_per_expert_gpu_example_gives_each_server_its_own_gpu(tmp_path):
    """Every server started with the same environment: all eight on the first GPU, and from the second
    on vLLM found too little free memory."""
    path = example(tmp_path, "gpu-vllm-per-expert.yaml")
    deployment = load_deployment(path)
    check_engine(deployment, str(path))
    servers = kind_of(deployment).servers(deployment, tmp_path / "logs")
    assert sorted(s.env["CUDA_VISIBLE_DEVICES"] for s in servers) == [str(i) for i in range(8)]
    assert servers[3].argv[servers[3].argv.index("--model") + 1] == "your-org/expert-3"


def test_a_local_model_that_is_missing_is_named(tmp_path):
    (tmp_path / "d.yaml").write_text(
        "classifier: c\nengine: {kind: vllm}\n"
        "experts: [{cluster: 0, model: e, model_path: models/e/final, endpoints: [http://127.0.0.1:8100]}]\n"
    )
    with pytest.raises(UserError, match="model_path: .*models/e/final does not exist"):
        check_engine(load_deployment(tmp_path / "d.yaml"))


def test_the_gpu_experiment_waits_for_every_expert():
    """It waited for the last expert's /health alone, and measured while the others still loaded."""
    experiment, _ = load_experiment(REPO / "deploy" / "experiment-gpu.yaml")
    experts = experiment.configurations[0].services[0]
    assert len(experts.ready_urls()) == 8


def test_a_service_is_ready_only_when_every_url_answers(monkeypatch, tmp_path):
    from expert_router import experiment as module

    class Running:
        returncode = None

        def poll(self) -> None:
            return None

    up = {"http://a/health"}
    monkeypatch.setattr(module, "http_ok", lambda url: url in up)
    configuration = module.Configuration(name="c", url="http://a")
    service = module.Service(
        name="s", command="true", ready_url=["http://a/health", "http://b/health"], ready_timeout_s=0.3
    )
    with pytest.raises(UserError, match="not ready within"):
        module._wait_ready(configuration, service, Running(), tmp_path)  # type: ignore[arg-type]
    up.add("http://b/health")
    module._wait_ready(configuration, service, Running(), tmp_path)  # type: ignore[arg-type]


def test_lora_ranks_are_ones_vllm_serves(tmp_path):
    """`--lora-rank 12` wrote max_lora_rank 12, which vLLM's argument parser refuses."""
    assert [served_rank(r) for r in (1, 8, 12, 16, 300)] == [8, 8, 16, 16, 320]
    with pytest.raises(ValueError):
        EngineSettings(max_lora_rank=12)  # type: ignore[arg-type]
    classifier = tmp_path / "c"
    classifier.mkdir()
    [path] = write_deployments(tmp_path, classifier, [0, 1], 8100, merged=False, lora_rank=12)
    assert load_deployment(path).engine.max_lora_rank == 16


def test_a_taken_port_is_refused_before_anything_starts(tmp_path):
    """A server left from an earlier run answered the new one's readiness check; the new one then
    failed to bind, and the old one was served."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        servers = [ServerProcess("e", f"http://127.0.0.1:{port}", ["e"], ["true"], tmp_path / "e.log")]
        with pytest.raises(UserError, match=f"already listens at http://127.0.0.1:{port}"):
            start(servers)
        assert servers[0].process is None


def test_a_server_that_fails_to_start_shows_what_it_wrote(tmp_path):
    """The log's tail was read before the server started: the message showed nothing, or an earlier run's."""
    log = tmp_path / "server.log"
    log.write_text("an earlier run's last line\n")
    process = subprocess.Popen(["sh", "-c", f"sleep 0.2; echo 'bad flag --max-lora-rank' >> {log}; exit 2"])
    with pytest.raises(UserError, match="bad flag --max-lora-rank"):
        wait_until(lambda: False, "vllm", 10.0, process, log)


def test_a_rebuild_replaces_what_the_earlier_build_wrote(tmp_path):
    """Rebuilt with another k or without --merge, old adapters and deployment files stayed beside the new."""
    for name in ("adapters/expert-7", "experts/expert-7", "base", "classifier"):
        (tmp_path / name).mkdir(parents=True)
    for name in ("deployment.yaml", "deployment-per-expert.yaml", "held-out.json", "notes.txt"):
        (tmp_path / name).write_text("x")
    clear_previous_build(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier", "notes.txt"]


def test_stop_signals_stop_once_and_a_closed_terminal_counts():
    """SIGHUP killed `experts serve` without stopping its servers (they run in sessions of their own);
    a second SIGTERM raised inside the stop and skipped its SIGKILL pass."""
    signals = StopSignals()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGHUP)
            signal.sigtimedwait([], 0) if hasattr(signal, "sigtimedwait") else None
            for _ in range(1000):
                pass
        os.kill(os.getpid(), signal.SIGTERM)  # while stopping: ignored
        for _ in range(1000):
            pass
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL


def test_a_missing_folder_inside_a_local_folder_is_not_a_hub_name(tmp_path):
    """`experts/expert-0` (a typo, or a model not yet trained) was read as the hub model of an org named
    "experts", and vLLM went to download it."""
    (tmp_path / "experts").mkdir()
    (tmp_path / "d.yaml").write_text(
        "classifier: c\nengine: {kind: vllm}\n"
        "experts: [{cluster: 0, model: e, model_path: experts/expert-0, endpoints: [http://127.0.0.1:8100]}]\n"
    )
    with pytest.raises(UserError, match=r"model_path: .*experts/expert-0 does not exist"):
        check_engine(load_deployment(tmp_path / "d.yaml"))
    (tmp_path / "experts").rmdir()  # no such folder: a hub name, downloaded by the engine
    assert str(load_deployment(tmp_path / "d.yaml").experts[0].model_path) == "experts/expert-0"
