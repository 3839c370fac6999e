"""ONNX export of (pruned) models, written atomically, and a check that onnxruntime agrees with torch.

We use the TorchScript exporter (``dynamo=False``) on purpose: for the plain CNNs this project
prunes it is several times faster than the torch.export-based exporter and handles
``torch.fx.GraphModule`` (what branch removal returns) without extra work. It is the one the tests
exercise. ``dynamo=True`` is accepted for users who want the newer exporter.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from slimbench.core.atomic import atomic_path
from slimbench.core.inputs import ExampleInputs, as_example_inputs

__all__ = ["export_onnx", "onnx_session", "session_feed", "onnx_max_abs_diff", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17


def export_onnx(model: nn.Module, example_inputs: ExampleInputs, path: str | os.PathLike, *,
                opset: int = DEFAULT_OPSET, dynamic_batch: bool = False, dynamo: bool = False) -> Path:
    """Export ``model`` (in eval mode; the caller's model is not touched) to ``path``.

    The file appears only when the export succeeded: it is written next to ``path`` under a
    temporary name and moved into place with ``os.replace``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx: model must be an nn.Module, got {type(model).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"export_onnx: folder {str(path.parent)!r} for {str(path)!r} does not exist; "
                                "create it first")
    inputs = as_example_inputs(example_inputs)
    frozen = copy.deepcopy(model).eval()
    names = [f"input{i}" for i in range(len(inputs))] if len(inputs) > 1 else ["input"]
    dynamic_axes = {n: {0: "batch"} for n in [*names, "output"]} if dynamic_batch else None
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # The TorchScript exporter announces its own deprecation on every call.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(frozen, inputs, str(tmp), input_names=names, output_names=["output"],
                          opset_version=opset, dynamic_axes=dynamic_axes, dynamo=dynamo,
                          do_constant_folding=True)
    return path


def onnx_session(path: str | os.PathLike, *, threads: int = 1):
    """An onnxruntime CPU session with fixed intra-op threads, no spinning, full graph optimisation."""
    import onnxruntime as ort

    if threads < 1:
        raise ValueError(f"onnx_session: threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn the cores other processes (and the interleaved model) need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def session_feed(session, example_inputs: ExampleInputs) -> dict[str, np.ndarray]:
    """Map the session's input names to the example inputs as float numpy arrays."""
    inputs = as_example_inputs(example_inputs)
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"the ONNX model takes {len(names)} inputs ({names}), got {len(inputs)}")
    return {n: t.detach().cpu().numpy() for n, t in zip(names, inputs, strict=True)}


def onnx_max_abs_diff(model: nn.Module, path: str | os.PathLike, example_inputs: ExampleInputs) -> float:
    """Largest |torch - onnxruntime| over the first output, on the given inputs."""
    inputs = as_example_inputs(example_inputs)
    frozen = copy.deepcopy(model).eval()
    with torch.inference_mode():
        expected = frozen(*inputs)
    if not isinstance(expected, Tensor):
        expected = expected[0]
    session = onnx_session(path)
    got = session.run(None, session_feed(session, inputs))[0]
    return float(np.abs(got - expected.numpy()).max())
