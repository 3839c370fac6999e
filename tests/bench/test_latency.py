"""Latency harness mechanics: statistics, interleaving, budgets, thread handling, backends.
No speed is asserted here (speed targets live in suites/ under --benchmark)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from slimbench.bench import latency
from slimbench.bench.latency import (
    BACKENDS,
    Backend,
    BackendUnavailable,
    Timing,
    available_backends,
    batch_inputs,
    environment,
    make_runner,
    measure,
    register_backend,
    require_backends,
    speedup,
    speedup_iqr,
    time_models,
    weight_bandwidth,
)


def _small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_timing_statistics():
    t = Timing("m", (1.0, 2.0, 3.0, 4.0, 100.0))
    assert t.median_ms == 3.0
    assert t.iqr_ms == pytest.approx(4.0 - 2.0)
    assert t.iqr_fraction == pytest.approx(2.0 / 3.0)
    assert speedup(Timing("a", (4.0,)), Timing("b", (2.0,))) == 2.0
    assert t.to_dict()["median_ms"] == 3.0


def test_measure_interleaves_and_respects_count_budget():
    calls = []
    runners = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    result = measure(runners, warmup=1, min_time_s=0.0, min_rounds=4, max_rounds=4, sample_ms=0.0)
    assert [len(result[n].samples_ms) for n in "ab"] == [4, 4]
    timed = calls[4:]  # warm-up + calibration: two calls each, runner by runner
    assert timed == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_measure_runs_until_time_budget():
    import time

    result = measure({"sleepy": lambda: time.sleep(0.002)}, warmup=0, min_time_s=0.05, min_rounds=1,
                     sample_ms=0.0)
    t = result["sleepy"]
    assert sum(t.samples_ms) >= 50.0
    assert t.median_ms >= 2.0


def test_measure_fixes_torch_threads_and_restores_them():
    seen = []
    before = torch.get_num_threads()
    measure({"m": lambda: seen.append(torch.get_num_threads())}, threads=2, min_time_s=0.0, min_rounds=2,
            max_rounds=2, sample_ms=0.0)
    assert set(seen) == {2}
    assert torch.get_num_threads() == before


def test_measure_rejects_bad_budgets():
    with pytest.raises(ValueError, match="at least one runner"):
        measure({})
    with pytest.raises(ValueError, match="min_rounds"):
        measure({"a": lambda: None}, min_rounds=5, max_rounds=2)


def test_batch_inputs_from_shape_and_tensor():
    assert batch_inputs((3, 8, 8), 4)[0].shape == (4, 3, 8, 8)
    x = torch.randn(2, 3, 8, 8)
    out = batch_inputs(x, 3)[0]
    assert out.shape == (3, 3, 8, 8) and torch.equal(out[2], x[0])
    with pytest.raises(ValueError, match="batch_size"):
        batch_inputs(x, 0)


def test_time_models_torch_and_ort_on_a_real_model_without_touching_it():
    model = _small_net().train()
    result = time_models({"net": model, "twice": nn.Sequential(_small_net(), nn.Identity())}, (3, 16, 16),
                         batch_size=2, min_time_s=0.02, min_rounds=3, sample_ms=1.0)
    assert set(result) == {"torch", "ort"}
    for backend, timings in result.items():
        assert set(timings) == {"net", "twice"}
        t = timings["net"]
        assert t.backend == backend and t.batch_size == 2 and t.threads == 1 and t.median_ms > 0
    assert model.training


def test_ort_runner_output_matches_torch():
    model = _small_net().eval()
    x = batch_inputs((3, 16, 16), 2)
    got = make_runner("ort", model, x)()[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(*x), atol=1e-5, rtol=1e-4)


def test_speedup_iqr_is_the_spread_of_per_round_ratios():
    ref, cand = Timing("a", (4.0, 4.0, 8.0, 4.0)), Timing("b", (2.0, 1.0, 2.0, 2.0))
    # per-round ratios 2, 4, 4, 2 -> quartiles 2 and 4 -> IQR 2; identical timings have none
    assert speedup_iqr(ref, cand) == pytest.approx(2.0)
    assert speedup_iqr(ref, ref) == 0.0
    with pytest.raises(ValueError, match="samples"):
        speedup_iqr(Timing("a", ()), ref)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown latency backend 'tvm'; choose from torch, ort, openvino"):
        make_runner("tvm", _small_net(), batch_inputs((3, 8, 8)))


def _absent(monkeypatch, name: str) -> None:
    """Simulate an uninstalled backend through the registry's own availability check."""
    monkeypatch.setitem(BACKENDS, name, dataclasses.replace(BACKENDS[name], available=lambda: False))


def test_a_missing_backend_is_a_clear_error_before_anything_is_timed(monkeypatch):
    _absent(monkeypatch, "openvino")
    assert "openvino" not in available_backends()
    with pytest.raises(BackendUnavailable, match=r"--backends openvino: OpenVINO is not installed: pip install"):
        require_backends(["torch", "openvino"])
    with pytest.raises(BackendUnavailable, match="openvino"):
        make_runner("openvino", _small_net(), batch_inputs((3, 8, 8)))
    calls = []
    with pytest.raises(BackendUnavailable):  # no silent drop: torch is not timed first either
        time_models({"net": _small_net()}, (3, 8, 8), backends=("torch", "openvino"),
                    min_time_s=0.0, min_rounds=2, sample_ms=0.0, clock=lambda: calls.append(1) or 0.0)
    assert calls == []


def test_registering_a_backend_is_one_call(monkeypatch):
    monkeypatch.setattr("slimbench.bench.latency.BACKENDS", dict(BACKENDS))
    from slimbench.bench import latency

    def factory(model, inputs, threads):
        frozen = model.eval()
        return lambda: frozen(*inputs)

    register_backend(Backend("eager_again", "eager again", factory, version=lambda: "1.0"))
    assert latency.available_backends()[-1] == "eager_again"
    result = time_models({"net": _small_net()}, (3, 8, 8), backends=("eager_again",), min_time_s=0.0,
                         min_rounds=2, sample_ms=0.0)
    assert result["eager_again"]["net"].median_ms > 0
    assert latency.backend_versions()["eager_again"] == "1.0"
    with pytest.raises(ValueError, match="identifier"):
        register_backend(Backend("two words", "x", factory))


def test_openvino_is_installed_and_agrees_with_torch():
    # the openvino extra is part of `make test` (pyproject [openvino]): the backend is really tested;
    # float32 (OpenVINO picks bf16 on its own where the CPU has it: differences of ~5e-4 here)
    assert "openvino" in available_backends()
    model = _small_net().eval()
    x = batch_inputs((3, 16, 16), 2)
    out = make_runner("openvino", model, x)()
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(next(iter(out.values()))), model(*x), atol=1e-5, rtol=1e-4)
    result = time_models({"net": model}, (3, 8, 8), backends=("openvino",), min_time_s=0.0,
                         min_rounds=2, sample_ms=0.0)
    assert result["openvino"]["net"].median_ms > 0 and result["openvino"]["net"].backend == "openvino"


def test_environment_names_machine_versions_and_commit():
    env = environment(threads=2)
    assert env["threads"] == 2 and env["cpu"] and env["machine"]
    assert env["versions"]["torch"] == torch.__version__
    assert env["versions"]["onnxruntime"] and env["versions"]["openvino"]
    assert env["commit"] is None or len(env["commit"]) == 40


def test_weight_bandwidth_is_one_layers_bytes_over_what_the_chain_adds_per_layer(monkeypatch):
    now = [0.0]
    compute_ms, read_ms = 0.2, 0.5  # per conv: its compute, and reading its weights when not cached

    def factory(model, inputs, threads):
        convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        seconds = (compute_ms * convs + (read_ms * convs if convs > 1 else 0.0)) / 1e3

        def run():
            now[0] += seconds
        return run

    monkeypatch.setitem(latency.BACKENDS, "fake", latency.Backend("fake", "fake", factory))
    bandwidth = weight_bandwidth("fake", clock=lambda: now[0], min_time_s=0.0, min_rounds=3, max_rounds=3)
    assert bandwidth == pytest.approx(4 * 512 * 512 * 9 / read_ms / 1e6)  # GB/s


def test_weight_bandwidth_on_onnxruntime_is_a_memory_rate():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    bandwidth = weight_bandwidth("ort", min_time_s=0.05, min_rounds=5)
    assert torch.equal(torch.rand(3), expected)  # the probe leaves the caller's random stream alone
    assert bandwidth is None or 0.5 < bandwidth < 1000  # GB/s: slower than a core's cache, faster than a disk
    cache = latency.last_level_cache_bytes()
    assert cache is None or 2**16 <= cache <= 2**32
