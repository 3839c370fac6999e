"""Latency tables on simulated time: a fake clock and fake runners that cost a known staircase."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import slimbench
from slimbench.analysis.graph import build_graph
from slimbench.bench import latency, latency_table
from slimbench.bench.latency import weight_bandwidth
from slimbench.bench.latency_predict import HOT_FLOOR, RESIDENT_ALL, RESIDENT_NONE, LatencyModel
from slimbench.bench.latency_table import (
    LatencyTable,
    build_table,
    layer_specs,
    step_ends,
    table_key,
)
from slimbench.models import get_model
from slimbench.pruning.plan import keep_from_plan
from tests.helpers import randomize_bn

STEP = 8


class FakeBackend:
    """Runners that advance a simulated clock by onnxruntime's shape of cost: ceil(cin/8) * ceil(cout/8)
    blocks, except that an output width that is not a multiple of 4 (nor the layer's own) runs an
    unblocked kernel, linear in it and ``penalty`` times the blocks' rate."""

    def __init__(self, step: int = STEP, overhead: float = 0.0, penalty: float = 1.5) -> None:
        self.now = 0.0
        self.step = step
        self.overhead = overhead
        self.penalty = penalty
        self.calls: list[tuple[str, int, int]] = []

    def clock(self) -> float:
        return self.now

    def cost(self, spec, cin: int, cout: int) -> float:
        # a constant plus a bilinear term: the table's floor + rank-1 model is then exact
        blocked = cout % 4 == 0 or cout == spec.out_channels
        outs = math.ceil(cout / self.step) if blocked else self.penalty * cout / self.step
        work = outs * (1 if spec.depthwise else math.ceil(cin / self.step))
        return self.overhead + 1e-6 * work * spec.kernel[0] * spec.kernel[1] * spec.height * spec.width / 64

    def factory(self, spec, cin: int, cout: int):
        self.calls.append((spec.key, cin, cout))
        seconds = self.cost(spec, cin, cout)

        def run():
            self.now += seconds

        return run


def _build(specs, fake: FakeBackend, cache_dir, **key):
    return build_table(specs, runner_factory=fake.factory, clock=fake.clock, cache_dir=cache_dir,
                       key=table_key("ort", key.get("threads", 1), version=key.get("version", "1.0"), cpu="fake"),
                       progress=False, min_time_s=0.0, min_rounds=3, max_rounds=3)


@pytest.fixture(scope="module")
def resnet20():
    model = randomize_bn(get_model("resnet20", "cifar10"), seed=0)
    x = torch.randn(1, 3, 32, 32)
    graph = build_graph(model, (x,))
    return model, x, graph, layer_specs(model, (x,), graph)


def test_layer_specs_dedupe_resnet20(resnet20):
    model, _, graph, specs = resnet20
    assert len(specs) == 20  # every conv of resnet20 and its classifier
    assert len({s.key for s in specs.values()}) == 7  # stem, 3 plain shapes, 2 strided, the classifier
    fc = specs["fc"]  # timed as the 1x1 conv on a 1x1 map it equals
    assert (fc.in_channels, fc.out_channels, fc.kernel, fc.height, fc.width) == (64, 10, (1, 1), 1, 1)
    assert fc.weight_bytes(64, 10) == 4 * model.fc.weight.numel()
    assert specs["conv1"].in_channels == 3 and (specs["conv1"].height, specs["conv1"].width) == (32, 32)


def test_step_ends_drop_widths_whose_next_step_costs_the_same():
    assert step_ends([4, 8, 12, 16], [1.0, 1.0, 2.0, 2.0]) == [8, 16]
    assert step_ends([4, 8, 12, 16], [1.0, 2.0, 3.0, 4.0]) == [4, 8, 12, 16]
    assert step_ends([4, 8, 12, 16], [3.0, 2.5, 2.0, 2.0]) == [16]  # a misaligned width slower than the next


def test_fake_staircase_yields_its_step_ends_exactly(resnet20, tmp_path):
    *_, specs = resnet20
    fake = FakeBackend()
    table = _build(specs, fake, tmp_path)
    for spec in specs.values():
        assert table.entries[spec.key]["step"] == STEP
        aligned_ends = {axis: [w for w in table.ends(spec, axis) if w % 4 == 0] for axis in ("out", "in")}
        assert aligned_ends["out"] == list(range(STEP, spec.out_channels + 1, STEP))
        if spec.in_channels > STEP:
            assert aligned_ends["in"] == list(range(STEP, spec.in_channels + 1, STEP))
        for cin, cout in [(spec.in_channels, spec.out_channels), (min(5, spec.in_channels), 9)]:
            assert table.cost(spec, cin, cout) == pytest.approx(fake.cost(spec, cin, cout) * 1e3, rel=1e-6)
    sampled = {c for _, cin, cout in fake.calls for c in (cin, cout)}
    assert sampled <= {3, *range(4, 65, 4), *range(7, 64, 8), 10}  # block ends (and end - 1), never every width


def test_misaligned_widths_are_read_on_the_unblocked_kernels_line(resnet20, tmp_path):
    # onnxruntime runs an output width that is not a multiple of 4 on a plain kernel: it costs more
    # than the block end above it, linearly; a multiple of 4 pads to its block; an input is read at its block
    *_, specs = resnet20
    fake = FakeBackend(overhead=2e-5)
    table = _build(specs, fake, tmp_path)
    spec = specs["layer3.1.conv1"]  # 64 -> 64
    for cin, cout in [(64, 23), (23, 64), (37, 21), (32, 45), (45, 32), (2, 62), (63, 1), (12, 20)]:
        assert table.cost(spec, cin, cout) == pytest.approx(fake.cost(spec, cin, cout) * 1e3, rel=1e-6), (cin, cout)
    assert table.cost(spec, 64, 23) > table.cost(spec, 64, 24)  # off the blocks: dearer than the end above
    assert table.cost(spec, 64, 20) == table.cost(spec, 64, 24)  # a multiple of 4 costs its block
    assert table.cost(spec, 21, 64) == table.cost(spec, 23, 64) == table.cost(spec, 24, 64)  # 8-channel blocks
    entry = table.entries[spec.key]
    assert {w for w, _ in entry["out"]} > {w for w, _ in entry["in"]} and 23 not in {w for w, _ in entry["in"]}


def test_a_width_independent_overhead_is_separated_by_the_corner_sample(resnet20, tmp_path):
    *_, specs = resnet20
    fake = FakeBackend(overhead=5e-5)
    table = _build(specs, fake, tmp_path)
    spec = specs["layer3.1.conv1"]
    for cin, cout in [(8, 8), (16, 48), (64, 8), (64, 64)]:
        assert table.cost(spec, cin, cout) == pytest.approx(fake.cost(spec, cin, cout) * 1e3, rel=1e-6)


def test_depthwise_convs_wider_than_a_block_get_one_curve(tmp_path):
    from torchvision.models import mobilenet_v2

    model = randomize_bn(mobilenet_v2(num_classes=10), seed=0).eval()
    x = torch.randn(1, 3, 32, 32)
    specs = layer_specs(model, (x,), build_graph(model, (x,)))
    depthwise = [s for s in specs.values() if s.depthwise and s.out_channels > 16]
    assert depthwise, "mobilenet_v2 has depthwise convs of 32..960 channels"
    fake = FakeBackend(16)
    table = _build(specs, fake, tmp_path)
    for spec in depthwise:
        entry = table.entries[spec.key]
        assert entry["in"] == entry["out"] and "corner" not in entry
        assert table.cost(spec, 20, 20) == pytest.approx(fake.cost(spec, 32, 32) * 1e3, rel=1e-6)  # 20 -> 2 blocks


def test_probe_picks_16_and_4(resnet20, tmp_path):
    *_, specs = resnet20
    for step in (16, 4):
        table = _build(specs, FakeBackend(step), tmp_path / str(step))
        assert {e["step"] for e in table.entries.values()} == {step}


def test_cache_is_reused_and_rebuilt_when_the_key_changes(resnet20, tmp_path):
    *_, specs = resnet20
    first = FakeBackend()
    table = _build(specs, first, tmp_path)
    assert first.calls and list(tmp_path.glob("*.json"))
    again = FakeBackend()
    cached = _build(specs, again, tmp_path)
    assert again.calls == [] and cached.entries == table.entries
    for change in ({"threads": 2}, {"version": "2.0"}):
        other = FakeBackend()
        _build(specs, other, tmp_path, **change)
        assert other.calls, f"a table with {change} must be measured, not read from the cache"
    assert LatencyTable.load(next(tmp_path.glob("ort-1t-*.json"))).entries == table.entries


def test_predictor_sums_layer_costs_and_calibrates(resnet20, tmp_path):
    _, _, graph, specs = resnet20
    fake = FakeBackend()
    lm = LatencyModel(_build(specs, fake, tmp_path), graph, specs)
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
    again = _build(specs, FakeBackend(), tmp_path)
    assert again.bandwidth_gb_s == 0.5
    assert _build(specs, FakeBackend(), tmp_path / "fresh").bandwidth_gb_s is None


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


@pytest.fixture
def stub(resnet20, tmp_path):
    _, _, graph, specs = resnet20
    return LatencyModel(_build(specs, FakeBackend(), tmp_path), graph, specs)


def test_target_latency_lands_on_the_predicted_budget(resnet20, stub):
    model, x, graph, _ = resnet20
    for widths in ("channels", "latency"):
        plan = slimbench.plan(model, x, target_latency=0.5, latency=stub, widths=widths)
        keep, removed = keep_from_plan(graph, plan)
        ratio = stub.predict(keep, removed) / stub.predict()
        assert 0.45 <= ratio <= 0.5, (widths, ratio)
        assert plan.options["latency"]["predicted_ratio"] == pytest.approx(ratio)
        assert plan.options["target_latency"] == 0.5 and plan.options["widths"] == widths


def test_target_latency_corrects_with_the_real_check(resnet20, stub):
    model, x, *_ = resnet20
    seen: list[float] = []

    def measure_fn(plan):  # the "real" pruned model runs 20 % slower than its MACs say
        seen.append(1.2 * plan.macs_after / plan.macs_before)
        return seen[-1]

    stub.measure_fn = measure_fn
    plan = slimbench.plan(model, x, target_latency=0.5, latency=stub)
    assert len(seen) >= 2  # it checked, missed, and searched again with a corrected goal
    assert abs(plan.options["latency"]["measured_ratio"] - 0.5) < abs(seen[0] - 0.5)


def test_target_latency_says_when_every_check_lands_far_too_fast(resnet20, stub):
    model, x, *_ = resnet20
    stub.measure_fn = lambda plan: 0.2  # misaligned widths: whatever is planned runs far faster than predicted
    with pytest.warns(UserWarning, match=r"target_latency=0.5 was missed: .* runs at 0.200 .* faster than asked"):
        plan = slimbench.plan(model, x, target_latency=0.5, latency=stub)
    assert plan.options["latency"]["measured_ratio"] == 0.2


def _kept(plan, name: str) -> int:
    layer = next(row for row in plan.layers if row["bn"] == name)
    return layer["after"]


def test_latency_widths_keep_step_ends_only(resnet20, stub):
    model, x, graph, _ = resnet20
    plain = slimbench.plan(model, x, ratio=0.5)
    aware = slimbench.plan(model, x, ratio=0.5, widths="latency", latency=stub)
    pruned_bns = [r["bn"] for r in aware.layers if r["before"] > r["after"]]
    assert pruned_bns
    assert any(_kept(plain, n) % STEP for n in pruned_bns)  # network slimming keeps widths inside steps
    for name in pruned_bns:  # never a width whose next-larger step costs the same
        assert _kept(aware, name) % STEP == 0, (name, _kept(aware, name))
    assert aware.pruned_channels >= 0.5 * plain.pruned_channels
    assert aware.options["latency"]["predicted_ratio"] < 1


def test_latency_widths_do_not_depend_on_what_misaligned_widths_cost(resnet20, tmp_path):
    # widths="latency" keeps whole blocks only: a misaligned width that runs cheaper than the block end
    # below it must not make that block end look dominated (it did: vgg19 fell to 16-channel layers)
    model, x, graph, specs = resnet20
    plans = []
    for penalty in (1.5, 0.3):
        lm = LatencyModel(_build(specs, FakeBackend(penalty=penalty), tmp_path / str(penalty)), graph, specs)
        plans.append(slimbench.plan(model, x, ratio=0.5, widths="latency", latency=lm))
    assert [r["after"] for r in plans[0].layers] == [r["after"] for r in plans[1].layers]
    assert all(_kept(plans[1], r["bn"]) % STEP == 0 for r in plans[1].layers if r["before"] > r["after"])


def test_steps_keep_the_criterions_layers_and_move_each_to_its_nearest_step_end(resnet20, stub):
    model, x, graph, _ = resnet20
    plain = slimbench.plan(model, x, ratio=0.5)
    steps = slimbench.plan(model, x, ratio=0.5, widths="steps", latency=stub)
    assert steps.options["widths"] == "steps" and steps.options["latency"]["predicted_ratio"] < 1
    moved = 0
    for before, after in zip(plain.layers, steps.layers, strict=True):
        assert after["bn"] == before["bn"]
        if before["before"] == before["after"]:
            continue  # not pruned by the criterion: nothing to move
        # the FakeBackend's steps end at multiples of STEP: the nearest one, ties up
        nearest = min(max(STEP * round(before["after"] / STEP + 1e-9), STEP), before["before"])
        assert after["after"] == nearest, (after["bn"], before["after"], after["after"])
        moved += after["after"] != before["after"]
    assert moved  # the criterion's widths were inside steps
    # a MACs budget searches the criterion's ratio under the snapping; it lands at or under the budget
    r8 = slimbench.plan(model, x, ratio=0.5, round_to=STEP)
    target = r8.macs_after / r8.macs_before
    at_macs = slimbench.plan(model, x, target_macs=target, widths="steps", latency=stub)
    assert at_macs.macs_after <= r8.macs_after and at_macs.macs_after >= 0.9 * r8.macs_after
    for row in at_macs.layers:
        assert row["after"] == row["before"] or row["after"] % STEP == 0, row
    # and a latency target searches it against the predictor
    fast = slimbench.plan(model, x, target_latency=0.5, widths="steps", latency=stub)
    keep, removed = keep_from_plan(graph, fast)
    assert 0.45 <= stub.predict(keep, removed) / stub.predict() <= 0.5


def test_latency_widths_drop_steps_that_buy_no_gamma(resnet20, stub):
    model, x, *_ = resnet20
    model = randomize_bn(get_model("resnet20", "cifar10"), seed=0)
    with torch.no_grad():
        model.layer3[0].bn1.weight[32:] = 0.0  # half of a 64-channel layer has no importance
    plan = slimbench.plan(model, x, ratio=0.05, widths="latency", latency=stub)
    assert _kept(plan, "layer3.0.bn1") == 32


def test_option_errors(resnet20, stub):
    model, x, *_ = resnet20
    with pytest.raises(ValueError, match="target_latency"):
        slimbench.plan(model, x, ratio=0.5, target_latency=0.5, latency=stub)
    with pytest.raises(ValueError, match="target_latency must be in"):
        slimbench.plan(model, x, target_latency=1.5, latency=stub)
    with pytest.raises(ValueError, match="widths must be one of"):
        slimbench.plan(model, x, widths="auto")
    for widths in ("latency", "steps"):
        with pytest.raises(ValueError, match="round_to=8 would be ignored"):
            slimbench.plan(model, x, widths=widths, round_to=8, latency=stub)
    with pytest.raises(ValueError, match="unknown setting"):
        slimbench.plan(model, x, widths="latency", latency={"backnd": "ort"})


def test_a_conv_is_timed_among_copies_of_itself_and_charged_per_copy(resnet20, tmp_path, monkeypatch):
    _, _, graph, specs = resnet20
    now, overhead, per_mac = [0.0], 50e-6, 1e-12  # seconds per timed model (its edges) and per MAC

    def factory(model, inputs, threads):  # the registry's runners, on simulated time
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        side = inputs[0].shape[-1]
        macs = sum(c.in_channels * c.out_channels * 9 * (side // c.stride[0]) ** 2 for c in convs)

        def run():
            now[0] += overhead + per_mac * macs
        return run

    monkeypatch.setitem(latency.BACKENDS, "fake", latency.Backend("fake", "fake", factory))
    table = build_table(specs, backend="fake", clock=lambda: now[0], cache_dir=tmp_path, progress=False,
                        key=table_key("fake", 1, version="1", cpu="fake"), min_time_s=0.0, min_rounds=3,
                        max_rounds=3)
    cache = latency.last_level_cache_bytes() or 32 * 2**20
    for name in ("layer1.0.conv1", "layer2.0.conv1"):  # a strided conv has copies too
        spec = specs[name]
        cin, cout = spec.in_channels, spec.out_channels
        copies = spec.copies(cin, cout, cache)
        assert table.entries[spec.key]["weights_read"] and 2 <= copies <= latency_table.COPIES_MAX
        # the model's edges are shared by the copies, as a layer inside a model shares its neighbours'
        assert table.cost(spec, cin, cout) == pytest.approx((overhead / copies + per_mac * spec.macs(cin, cout)) * 1e3)
    assert table.bandwidth_gb_s == 0.0  # probed: a chain of convs costs no more per conv here (no memory term)
    assert table.cache_bytes == cache
    spec = specs["layer2.0.conv1"]
    model = spec.module(16, 32, copies=3)
    assert [(c.in_channels, c.out_channels, c.stride) for c in model.modules() if isinstance(c, torch.nn.Conv2d)] == [
        (16, 32, (2, 2))] * 3
    x = torch.randn(1, 16, 32, 32)
    parts = [torch.nn.Sequential(c, n).eval()(x) for c, n in zip(model.convs, model.norms, strict=True)]
    expected = torch.relu(torch.relu(torch.relu(parts[0]) + parts[1]) + parts[2])
    torch.testing.assert_close(model(x), expected)
    # entries timed among copies read their weights in the timing: the predictor adds no memory term,
    # while a table timed one layer at a time (an injected factory) is charged at its bandwidth
    with_bandwidth = build_table(specs, backend="fake", clock=lambda: now[0], cache_dir=tmp_path, progress=False,
                                 key=table_key("fake", 1, version="1", cpu="fake"), bandwidth_gb_s=10.0)
    assert LatencyModel(with_bandwidth, graph, specs).conv_cost("layer2.0.conv1", 16, 32) == pytest.approx(
        table.cost(spec, 16, 32))
    fake = FakeBackend()
    alone = build_table(specs, runner_factory=fake.factory, clock=fake.clock, cache_dir=False,
                        progress=False, bandwidth_gb_s=10.0, min_time_s=0.0, min_rounds=3, max_rounds=3)
    assert LatencyModel(alone, graph, specs).conv_cost("layer2.0.conv1", 16, 32) == pytest.approx(
        alone.cost(spec, 16, 32) + spec.weight_bytes(16, 32) / 10e6)


def test_a_model_whose_weights_fit_in_the_cache_sheds_its_blocked_convs_weight_reads(resnet20, tmp_path):
    _, _, graph, specs = resnet20
    table = _build(specs, FakeBackend(), tmp_path)
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
    name, spec = "layer2.0.conv1", specs["layer2.0.conv1"]
    assert lm.conv_cost(name, 16, 30, 1.0) == pytest.approx(table.cost(spec, 16, 30))  # unblocked: no refund
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


def test_copies_follow_weight_bytes_and_macs():
    from slimbench.bench.latency_table import LayerSpec

    late = LayerSpec(512, 512, (3, 3), (1, 1), (1, 1), (1, 1), False, 2, 2)  # 9.4 MB of weights, 9.4M MACs
    assert late.copies(512, 512, 32 * 2**20) == 4  # enough copies to outgrow a 32 MiB cache
    assert late.copies(64, 64, 32 * 2**20) == latency_table.COPIES_MAX
    early = LayerSpec(64, 64, (3, 3), (1, 1), (1, 1), (1, 1), False, 32, 32)  # 37.7M MACs per copy
    assert early.copies(64, 64, 32 * 2**20) == latency_table.COPIES_MACS // early.macs(64, 64) == 4
    big = LayerSpec(256, 256, (3, 3), (1, 1), (1, 1), (1, 1), False, 56, 56)
    assert big.copies(256, 256, 32 * 2**20) == 2  # at least two: a layer's edges are always shared
    strided = LayerSpec(64, 128, (1, 1), (2, 2), (0, 0), (1, 1), False, 8, 8)
    assert strided.macs(64, 128) == 64 * 128 * 4 * 4
