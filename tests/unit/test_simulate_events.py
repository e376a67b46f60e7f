"""The discrete-event simulation on hand-computed cases, and its records as the analysis reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expert_router.analysis.results import CellKey, cell_folder, load_cells
from expert_router.emulate import build_config
from expert_router.emulate.engine import Engine
from expert_router.emulate.scheduler import Batch, Sequence
from expert_router.errors import UserError
from expert_router.experiment_file import Configuration, Service
from expert_router.loadgen.workload import WorkItem
from expert_router.simulate import EventQueue, VirtualEngine
from expert_router.simulate.run import Cell, simulate_cell
from expert_router.simulate.system import GatewayOverhead, System
from expert_router.simulate.users import Load, Users

EMULATE = (
    "expert-router emulate --preset paper-e --instances 1 --port 9000 --served-model-name m --output-lengths fixed:3"
)


def step_times(prompt: int, answer: int) -> list[float]:
    """By hand: one sequence alone, prefill then decodes, each iteration timed by the perf model."""
    config, _ = build_config("paper-e", instances=1)
    perf = Engine(config).perf
    seq = Sequence(0, prompt, answer, answer)
    times = [perf.step_time(Batch([(seq, prompt)]).work())]
    seq.advance(prompt)
    for _ in range(answer - 1):
        times.append(perf.step_time(Batch([(seq, 1)]).work()))
        seq.advance(1)
    return times


def test_event_queue_runs_in_time_order_and_keeps_ties_in_order():
    events, seen = EventQueue(), []
    events.at(2.0, lambda: seen.append("b"))
    events.at(1.0, lambda: seen.append("a"))
    events.at(2.0, lambda: seen.append("c"))
    events.run()
    assert seen == ["a", "b", "c"] and events.now == 2.0


def test_one_request_on_one_engine_has_exact_token_times():
    events = EventQueue()
    config, _ = build_config("paper-e", instances=1, output_lengths="fixed:3")
    engine = VirtualEngine(config, events)
    arrivals: list[float] = []
    ended = []
    events.at(0.5, lambda: engine.submit(7, 100, 50, arrivals, lambda reason, t: ended.append((reason, t))))
    events.run()
    expected = 0.5
    times = []
    for duration in step_times(100, 3):
        expected += duration
        times.append(expected)
    assert arrivals == pytest.approx(times, abs=1e-12)
    assert ended == [("stop", pytest.approx(times[-1], abs=1e-12))]


def test_one_closed_loop_user_sends_back_to_back():
    events = EventQueue()
    configuration = Configuration(
        name="x", url="http://127.0.0.1:9000", model="m", services=[Service(name="engine", command=EMULATE)]
    )
    system = System(configuration, Path("."), events)
    items = [WorkItem(0, 0, " ".join(["w"] * 100), 100, 50)]
    records = Users(system, events, items, [0], GatewayOverhead()).run(Load(users=1, duration_s=0.1))
    per_request = sum(step_times(100, 3))
    assert len(records) == int(0.1 // per_request) + 1  # the last starts before 0.1 s and still finishes
    for n, record in enumerate(records):
        assert record.t_start == pytest.approx(n * per_request)
        assert record.t_end == pytest.approx((n + 1) * per_request)
        assert record.output_tokens == 3 and record.finish_reason == "stop"


def test_a_workload_the_engine_refuses_entirely_is_an_error_not_an_endless_run():
    """Every request refused at the instant it was sent: closed-loop users sent again at once, and the
    run went on at virtual time 0 for ever (600,000 records in 5 s, memory growing)."""
    events = EventQueue()
    command = EMULATE + " --kv-cache-gb 0.05"  # too small for any of these requests
    configuration = Configuration(
        name="x", url="http://127.0.0.1:9000", model="m", services=[Service(name="engine", command=command)]
    )
    system = System(configuration, Path("."), events)
    items = [WorkItem(i, 0, " ".join(["w"] * 300), 300, 1000) for i in range(3)]
    with pytest.raises(UserError, match="refuses every request"):
        Users(system, events, items, [0, 0, 0], GatewayOverhead()).run(Load(users=2, duration_s=10.0))


def two_expert_router(tmp_path: Path) -> Configuration:
    """Configuration `r`: the gateway in front of two emulated experts, as an experiment file has it."""
    (tmp_path / "deploy.yaml").write_text(
        "classifier: c\nexperts:\n"
        + "".join(
            f"  - {{cluster: {c}, model: expert-{c}, endpoints: [http://127.0.0.1:{9100 + c}]}}\n" for c in range(2)
        )
    )
    return Configuration(
        name="r",
        url="http://127.0.0.1:8000",
        services=[
            Service(
                name="experts",
                command="expert-router emulate --preset paper-e --instances 2 --port 9100 "
                "--served-model-name expert-{i} --output-lengths fixed:2",
            ),
            Service(name="gateway", command="expert-router serve deploy.yaml --port 8000"),
        ],
    )


def test_routed_requests_pay_the_gateway_overhead(tmp_path):
    configuration = two_expert_router(tmp_path)
    items = [WorkItem(i, i % 2, "a b c", 3, 10) for i in range(4)]
    out = tmp_path / "cell"
    document = simulate_cell(
        Cell(configuration, "uniform", 2, 0),
        tmp_path,
        items,
        [1, 0, 1, 0],
        Load(users=2, duration_s=0.05),
        GatewayOverhead(0.010, 0.0),
        out,
    )
    assert (out / "records.jsonl").is_file() and (out / "cell.json").is_file()
    from expert_router.loadgen.records import read_records

    records = read_records(out / "records.jsonl")
    assert all(
        r.expert == f"expert-{r.cluster_routed}" and r.server_timing["route"] * 1000 == pytest.approx(10)
        for r in records
    )
    ttft = min(r.t_first_token - r.t_start for r in records)
    assert ttft == pytest.approx(0.010 + step_times(3, 2)[0])
    assert document["summary"]["ok"] == len(records)


def test_a_cell_without_records_reports_as_one_with_them(tmp_path):
    """`simulate --no-records`: no records.jsonl (a full sweep's are ~25 GB), and the report reads the
    same digest and run mode from what is kept."""
    configuration = two_expert_router(tmp_path)
    items = [WorkItem(i, i % 2, "a b c", 3, 10) for i in range(6)]
    folders = {}
    for mix, keep in (("uniform", True), ("normal", False)):
        folders[mix] = cell_folder(tmp_path / "results", "r", mix, 2, 0)
        simulate_cell(
            Cell(configuration, mix, 2, 0),
            tmp_path,
            items,
            [1, 0, 1, 0, 1, 0],
            Load(users=2, duration_s=0.05),
            GatewayOverhead(0.010, 0.0),
            folders[mix],
            keep_records=keep,
        )
    assert (folders["uniform"] / "records.jsonl").is_file()
    assert not (folders["normal"] / "records.jsonl").exists()
    cells = load_cells(tmp_path / "results")
    kept, left_out = (cells[CellKey("r", mix, 2)] for mix in ("uniform", "normal"))
    assert kept.mode == left_out.mode == "closed"
    assert left_out.runs[0].requests == kept.runs[0].requests > 0
    np.testing.assert_array_equal(left_out.runs[0].ttft, kept.runs[0].ttft)
    np.testing.assert_array_equal(left_out.runs[0].route, kept.runs[0].route)


def test_grouped_and_token_by_token_engines_give_the_same_times():
    """A virtual engine slices its step timeline when its engine groups decoders (guaranteed_no_evict),
    and appends step by step otherwise (max_utilization); with a cache too large to preempt, both
    schedule alike, so every request's token times are the same either way."""
    import functools

    import numpy as np

    results = []
    for policy in ("guaranteed_no_evict", "max_utilization"):
        events = EventQueue()
        config, _ = build_config("paper-e", instances=1, policy=policy, max_batch_size=8)
        engine = VirtualEngine(config, events)
        assert engine.engine.grouped == (policy == "guaranteed_no_evict")
        rng = np.random.default_rng(5)
        times: dict[int, list[float]] = {}
        for request in range(60):
            times[request] = []
            at, prompt, answer = float(rng.uniform(0, 2)), int(rng.integers(1, 900)), int(rng.integers(1, 200))

            send = functools.partial(engine.submit, request, prompt, answer, times[request], lambda reason, t: None)
            events.at(at, send)
        events.run()
        results.append(times)
    grouped, one_by_one = results
    assert grouped == one_by_one and all(grouped.values())


@pytest.mark.parametrize(
    "command, routed",
    [
        ("expert-router serve --port 8000 deploy.yaml", True),  # "--port" was read as the deployment file
        ("expert-router serve deploy.yaml --workers 2 --fallback none", True),
        ("python -m expert_router serve --host 127.0.0.1 deploy.yaml", True),
        ("vllm serve deploy.yaml --port 8000", False),  # another program's serve: no gateway to simulate
    ],
)
def test_a_gateway_service_is_read_with_serves_own_options(tmp_path, command, routed):
    configuration = two_expert_router(tmp_path)
    configuration.services[1] = Service(name="gateway", command=command)
    assert System(configuration, tmp_path, EventQueue()).routed is routed


def test_experiment_services_are_checked_when_the_file_is_read():
    """An unclosed quote was shlex's ValueError traceback once the services before it had started, and a
    ready_url that is no URL, urllib's."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not a command line"):
        Service(name="s", command="expert-router emulate 'unterminated")
    with pytest.raises(ValidationError, match="http"):
        Service(name="s", command="true", ready_url="not a url")
    with pytest.raises(ValidationError, match="http"):
        Service(name="s", command="true", ready_url=["http://127.0.0.1:8000/health", "localhost:1"])
