"""bench/gateway.py's goal checks: a ratio is read only where nginx's added time stands above the noise."""

import importlib.util
import sys

from expert_router.testing import REPO


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gateway", REPO / "bench" / "gateway.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_ratio_is_checked_where_nginx_adds_more_than_the_noise():
    bench = load_bench()
    assert bench.check(3.0, 2.0, 0.5, 1.5) == {"goal": 1.5, "noise_ms": 0.5, "ratio": 1.5, "met": True}
    assert bench.check(3.1, 2.0, 0.5, 1.5)["met"] is False


def test_no_ratio_is_read_where_nginx_adds_less_than_the_noise():
    bench = load_bench()
    verdict = bench.check(0.4, 0.03, 0.9, 1.5)  # 13x, of noise
    assert verdict["ratio"] is None and verdict["met"] is None and verdict["within_noise"] is True
    assert bench.check(1.0, 0.03, 0.9, 1.5)["within_noise"] is False
