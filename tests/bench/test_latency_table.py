"""Latency tables on simulated time (tests.latency_fakes): what is sampled, how a width is read, the
block probe, the cache, and the copies each conv is timed among."""

from __future__ import annotations

import pytest
import torch

from slimbench.analysis.graph import build_graph
from slimbench.bench import latency, latency_table
from slimbench.bench.latency_predict import LatencyModel
from slimbench.bench.latency_table import (
    LatencyTable,
    build_table,
    layer_specs,
    step_ends,
    table_key,
)
from tests.helpers import randomize_bn
from tests.latency_fakes import STEP, FakeBackend, build_fake_table, resnet20_case


@pytest.fixture(scope="module")
def resnet20():
    return resnet20_case()


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
    table = build_fake_table(specs, fake, tmp_path)
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


def test_a_plain_convs_misaligned_widths_cost_their_blocks(resnet20, tmp_path):
    # onnxruntime pads a plain conv's output to its block whatever the width, and reads an aligned-kernel
    # input at its block: the table reproduces such a backend exactly at any widths
    *_, specs = resnet20
    fake = FakeBackend(overhead=2e-5)
    table = build_fake_table(specs, fake, tmp_path)
    spec = specs["layer3.1.conv1"]  # 64 -> 64
    for cin, cout in [(64, 23), (23, 64), (37, 21), (32, 45), (45, 32), (2, 62), (63, 1), (12, 20)]:
        assert table.cost(spec, cin, cout) == pytest.approx(fake.cost(spec, cin, cout) * 1e3, rel=1e-6), (cin, cout)
    assert table.cost(spec, 64, 17) == table.cost(spec, 64, 24) > table.cost(spec, 64, 16)  # 17 pads to 24
    assert table.cost(spec, 64, 20) == table.cost(spec, 64, 24)  # a multiple of 4 costs its block
    assert table.cost(spec, 21, 64) == table.cost(spec, 23, 64) == table.cost(spec, 24, 64)  # 8-channel blocks
    entry = table.entries[spec.key]
    assert {w for w, _ in entry["out"]} == {w for w, _ in entry["in"]} >= {3, 7, 15, 23, 31, 63}
    # the misaligned output samples are timed, but a plain conv's output is read on the staircase even
    # where a backend runs them off it
    unpadded = build_fake_table(specs, FakeBackend(overhead=2e-5, pad_outputs=False), tmp_path / "unpadded")
    samples = dict(map(tuple, unpadded.entries[spec.key]["out"]))
    assert samples[23] > samples[24]
    assert unpadded.cost(spec, 64, 23) == pytest.approx(table.cost(spec, 64, 24))


def test_an_unblocked_input_is_read_on_the_misaligned_input_samples(resnet20, tmp_path):
    # a plain conv whose input width is off the blocks (and at least one block) runs an unblocked kernel,
    # linear in that width, its output padded to the blocks: read so when the caller says the conv runs it
    *_, specs = resnet20
    fake = FakeBackend(overhead=2e-5, in_penalty=1.4)
    table = build_fake_table(specs, fake, tmp_path)
    spec = specs["layer3.1.conv1"]  # 64 -> 64
    for cin, cout in [(23, 64), (37, 21), (45, 32), (50, 61), (63, 6)]:
        expected = fake.cost(spec, cin, cout) * 1e3
        assert table.cost(spec, cin, cout, unblocked_input=True) == pytest.approx(expected, rel=1e-6), (cin, cout)
        assert table.cost(spec, cin, cout) != pytest.approx(expected, rel=1e-3)  # at the block unless told
    assert table.cost(spec, 37, 64, unblocked_input=True) > table.cost(spec, 40, 64)  # dearer than the block end
    for cin, cout in [(24, 64), (64, 21), (5, 30)]:  # aligned, or below one block: the flag changes nothing
        assert table.cost(spec, cin, cout, unblocked_input=True) == table.cost(spec, cin, cout)


def test_a_width_independent_overhead_is_separated_by_the_corner_sample(resnet20, tmp_path):
    *_, specs = resnet20
    fake = FakeBackend(overhead=5e-5)
    table = build_fake_table(specs, fake, tmp_path)
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
    table = build_fake_table(specs, fake, tmp_path)
    for spec in depthwise:
        entry = table.entries[spec.key]
        assert entry["in"] == entry["out"] and "corner" not in entry
        assert table.cost(spec, 20, 20) == pytest.approx(fake.cost(spec, 32, 32) * 1e3, rel=1e-6)  # 20 -> 2 blocks


def test_probe_picks_16_and_4(resnet20, tmp_path):
    *_, specs = resnet20
    for step in (16, 4):
        table = build_fake_table(specs, FakeBackend(step), tmp_path / str(step))
        assert {e["step"] for e in table.entries.values()} == {step}


def test_cache_is_reused_and_rebuilt_when_the_key_changes(resnet20, tmp_path):
    *_, specs = resnet20
    first = FakeBackend()
    table = build_fake_table(specs, first, tmp_path)
    assert first.calls and list(tmp_path.glob("*.json"))
    again = FakeBackend()
    cached = build_fake_table(specs, again, tmp_path)
    assert again.calls == [] and cached.entries == table.entries
    for change in ({"threads": 2}, {"version": "2.0"}):
        other = FakeBackend()
        build_fake_table(specs, other, tmp_path, **change)
        assert other.calls, f"a table with {change} must be measured, not read from the cache"
    assert LatencyTable.load(next(tmp_path.glob("ort-1t-*.json"))).entries == table.entries


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
