"""The whole-model latency predictor (slimbench.bench.latency_predict) on simulated tables: the layer
sum, the calibration, weight reads at the table's bandwidth and the cache residency of small models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import slimbench
from slimbench.analysis.graph import build_graph
from slimbench.bench.latency_predict import HOT_FLOOR, RESIDENT_ALL, RESIDENT_NONE, LatencyModel
from slimbench.bench.latency_table import (
    build_table,
    layer_specs,
    table_key,
)
from slimbench.pruning.plan import keep_from_plan
from tests.latency_fakes import STEP, FakeBackend, build_fake_table, resnet20_case


@pytest.fixture(scope="module")
def resnet20():
    return resnet20_case()


def test_predictor_sums_layer_costs_and_calibrates(resnet20, tmp_path):
    _, _, graph, specs = resnet20
    fake = FakeBackend()
    lm = LatencyModel(build_fake_table(specs, fake, tmp_path), graph, specs)
    expected = sum(fake.cost(s, s.in_channels, s.out_channels) for s in specs.values()) * 1e3
    assert lm.predict() == pytest.approx(expected)
    keep = np.ones(graph.n_gids, dtype=bool)
    rec = graph.convs["layer1.0.conv1"]
    keep[rec.out_gids[8:]] = False  # 16 -> 8 channels: conv1's output and conv2's input
    s1, s2 = specs["layer1.0.conv1"], specs["layer1.0.conv2"]
    saved = (fake.cost(s1, 16, 16) - fake.cost(s1, 16, 8) + fake.cost(s2, 16, 16) - fake.cost(s2, 8, 16)) * 1e3
    assert lm.predict(keep) == pytest.approx(expected - saved)
    lm.calibrate([(lm.layer_sum(), 2 * lm.layer_sum() + 1), (lm.layer_sum(keep), 2 * lm.layer_sum(keep) + 1)])
    assert (lm.scale, lm.constant) == (pytest.approx(2.0), pytest.approx(1.0))


def test_weight_reads_are_charged_at_the_tables_memory_bandwidth(resnet20, tmp_path):
    _, _, graph, specs = resnet20
    fake = FakeBackend()
    table = build_table(specs, runner_factory=fake.factory, clock=fake.clock, cache_dir=tmp_path, progress=False,
                        key=table_key("ort", 1, version="1.0", cpu="fake"), bandwidth_gb_s=0.5,
                        min_time_s=0.0, min_rounds=3, max_rounds=3)
    lm = LatencyModel(table, graph, specs)
    compute = sum(fake.cost(s, s.in_channels, s.out_channels) for s in specs.values()) * 1e3
    weights = sum(s.weight_bytes(s.in_channels, s.out_channels) for s in specs.values())
    assert lm.predict() == pytest.approx(compute + weights / 0.5e6)  # 0.5 GB/s = 5e5 bytes per ms
    # halving a layer's output channels halves its weight bytes (and the next conv's)
    keep = np.ones(graph.n_gids, dtype=bool)
    keep[graph.convs["layer1.0.conv1"].out_gids[8:]] = False
    s1, s2 = specs["layer1.0.conv1"], specs["layer1.0.conv2"]
    assert s1.weight_bytes(16, 8) == s1.weight_bytes(16, 16) // 2 == s2.weight_bytes(8, 16)
    saved = (fake.cost(s1, 16, 16) - fake.cost(s1, 16, 8) + fake.cost(s2, 16, 16) - fake.cost(s2, 8, 16)) * 1e3
    assert lm.predict(keep) == pytest.approx(lm.predict() - saved - 2 * s1.weight_bytes(16, 8) / 0.5e6)
    # the bandwidth is cached with the table; simulated runners and no bandwidth: no memory term
    again = build_fake_table(specs, FakeBackend(), tmp_path)
    assert again.bandwidth_gb_s == 0.5
    assert build_fake_table(specs, FakeBackend(), tmp_path / "fresh").bandwidth_gb_s is None


def test_a_model_whose_weights_fit_in_the_cache_sheds_its_blocked_convs_weight_reads(resnet20, tmp_path):
    _, _, graph, specs = resnet20
    table = build_fake_table(specs, FakeBackend(), tmp_path)
    for entry in table.entries.values():
        entry["weights_read"] = True  # as the default runners time them: among copies, weights from memory
    table.bandwidth_gb_s = 1e-3  # slow enough that reads dominate: the HOT_FLOOR bound shows
    lm = LatencyModel(table, graph, specs)
    keep = np.ones(graph.n_gids, dtype=bool)
    weights = lm.weight_bytes()
    assert weights == sum(4 * m.weight.numel() for m in resnet20[0].modules()
                          if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))
    cold = sum(table.cost(specs[n], *lm.widths(n, keep)) for n in specs)

    table.cache_bytes = int(weights / RESIDENT_ALL)  # fits in a quarter of the cache: fully resident
    assert lm.residency(weights) == 1.0
    assert lm.layer_sum() == pytest.approx(HOT_FLOOR * cold)  # every conv on blocks, each floored
    assert lm.layer_sum(names=list(specs)) == pytest.approx(cold)  # a widths search compares table costs
    inner = specs["layer3.0.conv1"]  # 32 -> 64: a misaligned input puts it on the unblocked kernels
    assert lm.conv_cost("layer3.0.conv1", 30, 64, 1.0) == pytest.approx(table.cost(inner, 30, 64, True))  # no refund
    assert lm.conv_cost("layer3.0.conv1", 32, 60, 1.0) < table.cost(inner, 32, 60)  # output padded: blocked
    name, spec = "layer2.0.conv1", specs["layer2.0.conv1"]
    table.bandwidth_gb_s = 1e3  # fast memory: the refund is the read time itself
    read = spec.weight_bytes(16, 32) / 1e9
    assert lm.conv_cost(name, 16, 32, 1.0) == pytest.approx(table.cost(spec, 16, 32) - read)
    assert lm.conv_cost(name, 16, 32, 0.5) == pytest.approx(table.cost(spec, 16, 32) - read / 2)

    middle = (RESIDENT_ALL + RESIDENT_NONE) / 2
    table.cache_bytes = int(weights / middle)
    assert lm.residency(weights) == pytest.approx(0.5, abs=1e-6)
    table.cache_bytes = int(weights / RESIDENT_NONE)  # three quarters of the cache: streamed, as timed
    assert lm.residency(weights) == 0.0 and lm.layer_sum() == pytest.approx(cold)
    # a plan that prunes deep enough becomes resident
    plan = slimbench.plan(resnet20[0], resnet20[1], method="uniform", ratio=0.7, round_to=STEP)
    kept, removed = keep_from_plan(graph, plan)
    assert lm.weight_bytes(kept, removed) < RESIDENT_ALL / RESIDENT_NONE * weights
    assert lm.residency(lm.weight_bytes(kept, removed)) == 1.0


def _conv_bn(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class _Joined(nn.Module):
    """Two convs concatenated into a third, then a 1x1 conv and a 3x3 conv in a chain."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _conv_bn(3, 24, 3), _conv_bn(3, 24, 3)
        self.mix = _conv_bn(48, 32, 3)
        self.point = _conv_bn(32, 32, 1)
        self.last = _conv_bn(32, 32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.point(self.mix(torch.cat([self.a(x), self.b(x)], 1))))


def test_a_misaligned_input_is_priced_on_the_unblocked_kernel_where_onnxruntime_runs_it(tmp_path):
    """A 3x3 conv fed by one layer: on the table's misaligned input samples (onnxruntime's unblocked kernel,
    measured per node in vgg19, resnet56, resnet50); a 1x1 conv, or one whose input is a concatenation
    (densenet40): at the block, as they ran."""
    model, x = _Joined().eval(), torch.randn(1, 3, 16, 16)
    graph = build_graph(model, (x,))
    specs = layer_specs(model, (x,), graph)
    table = build_fake_table(specs, FakeBackend(in_penalty=1.4), tmp_path)
    lm = LatencyModel(table, graph, specs)
    assert lm.concatenated_inputs == {"mix.0"}
    unblocked = table.cost(specs["last.0"], 30, 32, unblocked_input=True)
    assert lm.conv_cost("last.0", 30, 32) == pytest.approx(unblocked)
    assert unblocked > table.cost(specs["last.0"], 32, 32)
    for name, cin in (("point.0", 30), ("mix.0", 46)):
        assert lm.conv_cost(name, cin, 32) == pytest.approx(table.cost(specs[name], cin, 32)), name
        assert lm.conv_cost(name, cin, 32) < table.cost(specs[name], cin, 32, unblocked_input=True), name
    assert lm.conv_cost("last.0", 28, 32) == pytest.approx(table.cost(specs["last.0"], 28, 32))  # aligned: blocked
