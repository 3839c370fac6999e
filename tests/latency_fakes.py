"""Simulated latency tables for tests: a fake clock and fake runners that cost a known staircase, and the
resnet20 case the table, predictor and planning tests share."""

from __future__ import annotations

import math

import torch

from slimbench.analysis.graph import build_graph
from slimbench.bench.latency_predict import LatencyModel
from slimbench.bench.latency_table import build_table, layer_specs, table_key
from slimbench.models import get_model
from tests.helpers import randomize_bn

STEP = 8


class FakeBackend:
    """Runners that advance a simulated clock by onnxruntime's shape of cost: ceil(cin/8) * ceil(cout/8)
    blocks, except that a depthwise conv whose width is not a multiple of 4 (nor the layer's own) runs an
    unblocked kernel, linear in it and ``penalty`` times the blocks' rate (a plain conv pads its output to
    the blocks, unless ``pad_outputs=False`` puts it on that kernel too); with ``in_penalty``, a plain conv's
    input width off the blocks from one block up runs an unblocked kernel (``in_penalty`` times the rate),
    its output padded to the blocks."""

    def __init__(self, step: int = STEP, overhead: float = 0.0, penalty: float = 1.5,
                 in_penalty: float | None = None, pad_outputs: bool = True) -> None:
        self.now = 0.0
        self.pad_outputs = pad_outputs
        self.step = step
        self.overhead = overhead
        self.penalty = penalty
        self.in_penalty = in_penalty
        self.calls: list[tuple[str, int, int]] = []

    def clock(self) -> float:
        return self.now

    def cost(self, spec, cin: int, cout: int) -> float:
        # a constant plus a bilinear term: the table's floor + rank-1 model is then exact
        unblocked_input = (self.in_penalty is not None and not spec.depthwise and cin % 4 != 0 and cin >= self.step
                           and cin != spec.in_channels)
        padded = unblocked_input or (self.pad_outputs and not spec.depthwise)
        blocked = padded or cout % 4 == 0 or cout == spec.out_channels
        outs = math.ceil(cout / self.step) if blocked else self.penalty * cout / self.step
        ins = self.in_penalty * cin / self.step if unblocked_input else math.ceil(cin / self.step)
        work = outs * (1 if spec.depthwise else ins)
        return self.overhead + 1e-6 * work * spec.kernel[0] * spec.kernel[1] * spec.height * spec.width / 64

    def factory(self, spec, cin: int, cout: int):
        self.calls.append((spec.key, cin, cout))
        seconds = self.cost(spec, cin, cout)

        def run():
            self.now += seconds

        return run


def build_fake_table(specs, fake: FakeBackend, cache_dir, **key):
    return build_table(specs, runner_factory=fake.factory, clock=fake.clock, cache_dir=cache_dir,
                       key=table_key("ort", key.get("threads", 1), version=key.get("version", "1.0"), cpu="fake"),
                       progress=False, min_time_s=0.0, min_rounds=3, max_rounds=3)


def resnet20_case():
    """resnet20 (random gamma) at 32x32: (model, input, graph, layer specs)."""
    model = randomize_bn(get_model("resnet20", "cifar10"), seed=0)
    x = torch.randn(1, 3, 32, 32)
    graph = build_graph(model, (x,))
    return model, x, graph, layer_specs(model, (x,), graph)


def fake_latency_model(case, cache_dir) -> LatencyModel:
    """An uncalibrated LatencyModel of ``resnet20_case()`` over the FakeBackend's staircase."""
    _, _, graph, specs = case
    return LatencyModel(build_fake_table(specs, FakeBackend(), cache_dir), graph, specs)
