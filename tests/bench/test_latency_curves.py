"""How a latency curve is sampled and read: staircase on aligned widths (and a plain conv's misaligned
output, padded), a line through a depthwise conv's misaligned widths, and a line below one block on the input
side."""

from __future__ import annotations

import pytest

from slimbench.bench.latency_curves import aligned, blocked, conv_cost, detect_step, grid


def test_grid_samples_block_ends_the_first_block_and_the_misaligned_widths():
    assert grid(48, 16) == [3, 4, 8, 12, 15, 16, 31, 32, 47, 48]
    assert grid(24, 16) == [3, 4, 8, 12, 15, 16, 23, 24]  # the full width's end - 1 too
    assert grid(3, 16) == [3]  # a stem's RGB input: only its own width
    assert grid(48, 4) == list(range(4, 49, 4))  # no blocks wider than 4: nothing runs off them


def test_aligned_widths_are_multiples_of_4_or_the_layers_own():
    assert aligned(20, 64) and aligned(3, 3) and not aligned(23, 64)


def _entry(size: int, blocked, unblocked, corner=None) -> dict:
    curve = [[w, blocked(w) if aligned(w, size) else unblocked(w)] for w in grid(size, 16)]
    entry = {"step": 16, "out": curve, "in": curve}
    if corner is not None:
        entry["corner"] = corner
    return entry


def test_depthwise_reads_the_staircase_when_aligned_and_the_line_when_not():
    entry = _entry(64, lambda w: -(-w // 16) * 1.0, lambda w: 0.2 * w)
    assert conv_cost(entry, True, 20, 20, 20, 64) == 2.0  # 20 pads to 32: two blocks
    assert conv_cost(entry, True, 23, 23, 23, 64) == pytest.approx(4.6)  # between the samples at 15 and 31
    assert conv_cost(entry, True, 1, 1, 1, 64) == pytest.approx(0.2)  # below the first sample: extended
    assert conv_cost(entry, True, 64, 64, 64, 64) == 4.0


def test_a_plain_convs_misaligned_output_is_padded_to_its_block_and_an_input_read_at_its_block():
    # onnxruntime pads a plain conv's output to the block whatever its width: on the zoo's format-/6 tables
    # an output of e - 1 channels costs what e does (median 1.00, 5-95 % 0.97-1.03 over 1,359 samples), so
    # 17 channels cost the block of 32, not a point on the line between the samples at 15 and 31
    size = 64
    out = [[w, -(-w // 16) * 4.0] for w in grid(size, 16)]
    inn = [[w, -(-w // 16) * 4.0] for w in grid(size, 16) if aligned(w, size)]
    entry = {"step": 16, "out": out, "in": inn, "corner": 1.0}  # blocked at (4, 4): one block of one
    assert conv_cost(entry, False, 64, 64, 64, 64) == pytest.approx(16.0)
    assert conv_cost(entry, False, 32, 32, 64, 64) == pytest.approx(4.0)
    assert conv_cost(entry, False, 64, 17, 64, 64) == pytest.approx(8.0)  # two output blocks, as 32
    assert conv_cost(entry, False, 64, 23, 64, 64) == conv_cost(entry, False, 64, 32, 64, 64)
    assert conv_cost(entry, False, 32, 23, 64, 64) == pytest.approx(4.0)  # input: 2 blocks of 4
    assert conv_cost(entry, False, 23, 32, 64, 64) == conv_cost(entry, False, 32, 32, 64, 64)
    # the misaligned samples are not read for a plain conv, even where they lie off the staircase
    entry["out"] = [[w, c if aligned(w, size) else 99.0] for w, c in out]
    assert conv_cost(entry, False, 64, 23, 64, 64) == pytest.approx(8.0)


def test_blocked_kernels_follow_the_input_width_of_a_plain_conv_and_the_width_of_a_depthwise_one():
    # read off onnxruntime 1.32's optimized graphs: the input width decides, the output is padded
    assert blocked(False, 32, 30, 64, 64, 16) and blocked(False, 36, 64, 64, 64, 16)
    assert not blocked(False, 30, 32, 64, 64, 16)
    assert blocked(False, 13, 32, 64, 64, 16)  # narrower than a block: read directly, still blocked
    assert blocked(True, 72, 72, 96, 96, 16) and not blocked(True, 70, 70, 96, 96, 16)
    assert blocked(False, 3, 16, 3, 16, 16)  # a stem's RGB input


def test_an_input_narrower_than_one_block_is_read_on_the_direct_kernels_line():
    # onnxruntime reads an input narrower than its block directly, linear in the width and dearer than the
    # block (mobilenet_v2's 1x1 expand convs at 56x56: 14 input channels cost about twice 16 of them)
    size = 64
    out = [[w, -(-w // 16) * 3.0] for w in grid(size, 16) if aligned(w, size)]
    inn = [[w, 0.5 * w if w < 16 else -(-w // 16) * 3.0] for w in grid(size, 16) if aligned(w, size)]
    entry = {"step": 16, "out": out, "in": inn}
    assert conv_cost(entry, False, 12, 64, 64, 64) == pytest.approx(6.0)  # a sample
    assert conv_cost(entry, False, 10, 64, 64, 64) == pytest.approx(5.0)  # on the line, not at 12's sample
    assert conv_cost(entry, False, 14, 64, 64, 64) == pytest.approx(7.0)  # extended: not the block's 3.0
    assert conv_cost(entry, False, 16, 64, 64, 64) == pytest.approx(3.0)  # one block: the blocked kernel
    assert conv_cost(entry, False, 20, 64, 64, 64) == pytest.approx(6.0)  # above: the staircase, as before
    assert conv_cost(entry, False, 14, 32, 64, 64) == pytest.approx(3.5)  # rank-1: half the outputs


def test_detect_step_finds_the_widest_flat_block():
    widths = list(range(4, 65, 4))
    assert detect_step(widths, [float(-(-w // 16)) for w in widths], 0.03) == 16
    assert detect_step(widths, [float(-(-w // 8)) for w in widths], 0.03) == 8
    assert detect_step(widths, [float(w) for w in widths], 0.03) == 4
    noisy = [float(-(-w // 16)) * (1.2 if w == 36 else 1.0) for w in widths]  # one sample disturbed
    assert detect_step(widths, noisy, 0.03) == 16
    creeping = [float(-(-w // 16)) + 0.01 * (w % 16) for w in widths]  # +10 % inside each block
    assert detect_step(widths, creeping, 0.03) == 16
