"""The process ``slimbench regress`` starts inside one version's source tree (PYTHONPATH = that tree).

It is run as a script (never imported by the harness), so everything it measures (the zoo, plan,
prune, ONNX export, thop_ext.profile) comes from the version under test; it uses only their public
names, which older versions also have. Requests and answers are JSON lines on stdin / stdout (the
version's own prints are sent to stderr). Times are thread CPU seconds: one-thread torch runs in
this thread, and CPU time leaves out the time a loaded machine gives the core to other processes.
"""

from __future__ import annotations

import json
import sys
import time
import warnings


def _model(cache: dict, name: str, dataset: str):
    """The zoo model with seeded gamma in (0, 1) (as the suites make it) and its example input."""
    key = (name, dataset)
    if key not in cache:
        import torch
        from torch.nn.modules.batchnorm import _BatchNorm

        from slimbench.models import get_model, model_info

        model = get_model(name, dataset)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, _BatchNorm) and m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g))
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        x = torch.randn(1, *model_info(name, dataset).input_shape, generator=torch.Generator().manual_seed(1))
        cache[key] = (model.eval(), x)
    return cache[key]


def _plan_prune(model, x, ratio: float):
    import slimbench

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "gamma cannot rank channels" on seeded gamma
        plan = slimbench.plan(model, x, ratio=ratio)
        return plan, slimbench.prune(model, x, plan=plan)


def _export_onnx():
    try:
        from slimbench.bench.export import export_onnx
    except ImportError:  # versions before the subpackage layout
        from slimbench.export import export_onnx
    return export_onnx


def handle(request: dict, cache: dict) -> dict:
    model, x = _model(cache, request["model"], request["dataset"])
    op = request["op"]
    if op == "export":
        plan, pruned = _plan_prune(model, x, request["ratio"])
        _export_onnx()(pruned, x, request["path"])
        return {"params": sum(p.numel() for p in pruned.parameters()), "macs": int(plan.macs_after)}
    if op == "time":
        if request["tool"] == "plan+prune":
            def work():
                _plan_prune(model, x, request["ratio"])
        elif request["tool"] == "profile":
            from thop_ext import profile

            def work():
                profile(model, (x,))
        else:
            raise ValueError(f"unknown tool {request['tool']!r}")
        # the fastest of a few calls filling the budget: interference on a shared machine only adds time
        best, spent, calls = float("inf"), 0.0, 0
        while calls < 2 or spent < request.get("budget", 0.2):
            start = time.thread_time()
            work()
            elapsed = time.thread_time() - start
            best, spent, calls = min(best, elapsed), spent + elapsed, calls + 1
        return {"seconds": best, "calls": calls}
    raise ValueError(f"unknown request {op!r}")


def main() -> int:
    answers = sys.stdout
    sys.stdout = sys.stderr  # what the version prints must not break the protocol

    def answer(data: dict) -> None:
        answers.write(json.dumps(data) + "\n")
        answers.flush()

    import torch

    torch.set_num_threads(1)
    import slimbench

    answer({"ready": True, "slimbench": slimbench.__file__})
    cache: dict = {}
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("op") == "quit":
            break
        try:
            answer(handle(request, cache))
        except Exception as error:  # reported to the harness, which names the version and the case
            answer({"error": f"{type(error).__name__}: {error}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
