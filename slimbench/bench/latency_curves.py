"""A layer's measured latency curves: which widths are sampled, and what a kept width costs.

Backends run convs on channel blocks, so latency is a staircase in the kept widths. onnxruntime pads
any width that is a multiple of 4 (``PROBE_STEP``) up to its block (16 channels with AVX-512 here):
the table's probe times multiples of 4 and finds the cost flat over each block. A depthwise conv whose
width is not a multiple of 4 leaves the blocked kernels for a plain one whose cost grows about
linearly with the width and can exceed the block end above: profiled inside mobilenet_v2 at 224, a
depthwise conv of 72 channels ran in 0.028 ms, one of 79 in 0.30 ms. A plain conv pads any output
width to its block: on the zoo's tables an output of end - 1 channels costs what the end does (median
1.00, 5-95 % 0.97-1.03 over 1,359 samples).

So the output curve holds two kinds of samples. Aligned ones (every 4 inside the first block, every
block end, the full width) are read as a staircase: a kept width costs the smallest aligned sample at
or above it, as does a plain conv's misaligned output. A depthwise conv's misaligned widths are read by
linear interpolation between the misaligned samples (3 and every block end - 1). The input
curve is read as a staircase over its aligned samples, a misaligned input width at its block, unless
the caller says the conv runs its ``unblocked_input`` kernel: then on the line through the input
curve's misaligned samples. Which convs do depends on more than the layer (``LatencyModel``: a
misaligned input wider than a block puts a plain conv on onnxruntime's unblocked kernel, but inside
densenet40, whose inputs are concatenations, such convs ran at about their block). Below one block the
input side is a line, not a staircase: onnxruntime reads an input narrower than its block directly
(the kernel of a network's first conv), linear in the width and up to twice the block's cost on a 1x1
conv at 56x56 (mobilenet_v2's expand convs: 14 input channels ran 0.21 ms, read at the block 0.09).
``cost = a + (out(cout) - a) * (in(cin) - a) / (full - a)``: rank-1 in the widths above a
width-independent floor ``a`` that the corner sample (both widths at their smallest aligned) pins down.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PROBE_STEP", "grid", "step_ends", "detect_step", "conv_cost", "aligned", "blocked"]

PROBE_STEP = 4
Curve = list[list[float]]  # [[width, ms], ...] sorted by width


def aligned(width: int, size: int) -> bool:
    """Whether a kept width stays on the blocked kernels (a multiple of ``PROBE_STEP``, or the layer's own)."""
    return width % PROBE_STEP == 0 or width == size


def blocked(depthwise: bool, cin: int, cout: int, in_size: int, out_size: int, step: int) -> bool:
    """Whether a conv at these kept widths runs on the backend's blocked kernels, as onnxruntime 1.32's
    graph shows (``SessionOptions.optimized_model_filepath``): a plain conv when its input width is
    aligned or narrower than one block (its output is padded to the block whatever its width); a
    depthwise conv when its width is aligned."""
    if depthwise:
        return aligned(cout, out_size)
    return cin < step or aligned(cin, in_size)


def grid(size: int, step: int) -> list[int]:
    """Widths timed along one side of a layer of ``size`` channels: every 4 inside the first block
    (small widths are often not blocked), every block end, and, where blocks are wider than 4, 3 and
    each block end - 1 (the unblocked kernels)."""
    ends = [*range(step, size, step), size]
    fine = range(PROBE_STEP, min(step, size), PROBE_STEP)
    slower = []
    if step > PROBE_STEP:
        slower = [e - 1 for e in ends if e % PROBE_STEP == 0] + ([PROBE_STEP - 1] if size > PROBE_STEP else [])
    return sorted({*fine, *ends, *slower})


def step_ends(widths: list[int], costs: list[float], tol: float = 0.03) -> list[int]:
    """The widths worth keeping: those every larger width costs more than (by more than ``tol``)."""
    ends, cheapest = [], float("inf")
    for w, c in sorted(zip(widths, costs, strict=True), reverse=True):
        if c < cheapest * (1 - tol):
            ends.append(w)
            cheapest = c
    return sorted(ends)


def detect_step(widths: list[int], costs: list[float], tol: float) -> int:
    """The widest block (16, 8, else 4) whose ends are where the probe's cost jumps: the median jump
    across a block end beats ``tol`` and three times the median spread inside a block (medians, so that
    one sample disturbed by another process does not change the table's grid; a cost that creeps up
    inside blocks, as a depthwise conv's input conversion does, still shows its blocks)."""
    table = dict(zip(widths, costs, strict=True))
    for step in (16, 8):
        ends = range(step, max(widths) - PROBE_STEP + 1, step)
        jumps = [table[e + PROBE_STEP] / table[e] - 1 for e in ends if e in table and e + PROBE_STEP in table]
        blocks = [[table[w] for w in widths if e - step < w <= e] for e in range(step, max(widths) + 1, step)]
        spreads = [max(b) / min(b) - 1 for b in blocks if len(b) > 1]
        if jumps and spreads and np.median(jumps) > max(tol, 3 * np.median(spreads)):
            return step
    return PROBE_STEP


def _split(curve: Curve) -> tuple[Curve, Curve]:
    size = int(curve[-1][0])
    on = [p for p in curve if aligned(int(p[0]), size)]
    off = [p for p in curve if not aligned(int(p[0]), size)]
    return on, off


def _stair(curve: Curve, width: int) -> float:
    for w, ms in curve:
        if w >= width:
            return float(ms)
    return float(curve[-1][1])


def _line(off: Curve, width: int) -> float:
    """Linear through the misaligned samples ``off``, extended past the first or last two (the full
    width is aligned, and widths 1 and 2 lie below the first sample)."""
    xs, ys = [p[0] for p in off], [p[1] for p in off]
    if len(xs) > 1 and not xs[0] <= width <= xs[-1]:
        i = 0 if width < xs[0] else -2
        return max(float(ys[i] + (ys[i + 1] - ys[i]) * (width - xs[i]) / (xs[i + 1] - xs[i])), 0.0)
    return float(np.interp(width, xs, ys))


def _floor(corner: float | None, out: float, inn: float, full: float) -> float:
    """The width-independent part of a conv's cost: the rank-1 model must give the corner sample."""
    if corner is None:
        return 0.0
    denominator = full + corner - out - inn
    if abs(denominator) < 1e-12:
        return 0.0
    return float(min(max((corner * full - out * inn) / denominator, 0.0), 0.9 * min(out, inn, full)))


def conv_cost(entry: dict, depthwise: bool, cin: int, cout: int, in_size: int, out_size: int,
              unblocked_input: bool = False) -> float:
    """The cost (ms) of a table entry's conv at ``cin`` / ``cout`` kept (``*_size``: its full widths);
    ``unblocked_input``: a misaligned ``cin`` is read on the input curve's misaligned samples."""
    out_on, out_off = _split(entry["out"])
    in_on, in_off = _split(entry["in"])
    unblocked_input = (unblocked_input and not depthwise and cin >= entry["step"] and not aligned(cin, in_size)
                       and bool(in_off))
    # a plain conv pads its output to the block (its table's e-1 samples cost what e does), a depthwise
    # conv off the blocks runs an unblocked kernel, linear in the width
    misaligned_out = depthwise and out_off and not aligned(cout, out_size)
    out = _line(out_off, cout) if misaligned_out else _stair(out_on, cout)
    if depthwise:
        return out
    full = _stair(out_on, out_size)
    floor = _floor(entry.get("corner"), out_on[0][1], in_on[0][1], full)
    if full - floor <= 1e-12:
        return float(out)
    below = [p for p in entry["in"] if p[0] < entry["step"]] if cin < entry["step"] else []  # direct kernel
    if len(below) > 1:
        inn = _line(below, cin)
    elif unblocked_input:
        inn = _line(in_off, cin)
    else:
        inn = _stair(in_on, cin)
    return float(floor + (out - floor) * (inn - floor) / (full - floor))
