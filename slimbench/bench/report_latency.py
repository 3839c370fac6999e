"""The ``--latency-aware`` rows of ``slimbench report``: network slimming planned with ``target_latency`` = the
measured latency of network slimming ``round_to=8`` at the middle ratio (``variants.LATENCY_ROWS``), what
the caption says of them and what the run record keeps."""

from __future__ import annotations

import torch
from torch import nn

from slimbench.bench.variants import latency_reference
from slimbench.pruning.plan import PruningPlan

__all__ = ["equal_latency_options", "planned", "latency_note", "latency_tables", "ROW_MEANING"]


def equal_latency_options(name: str, model: nn.Module, x: torch.Tensor, latency: dict,
                          plans: dict[str, PruningPlan], ratio: float) -> tuple[dict, dict]:
    """Plan options of the latency-aware rows, and what they are matched to: ``target_latency`` = the
    measured latency fraction (pruned / unpruned, interleaved, fastest samples) of network slimming
    ``round_to=8`` at ``ratio`` (planned before them), on the report's latency backend, batch and threads.
    One calibrated latency model serves that measurement and every row's search and real checks;
    ``latency``: the report's latency settings (``ReportSettings.latency_options``). ``matched["rows"]``
    gets, per row label, where its search ended (``planned``)."""
    from slimbench.pruning.latency_model import latency_model

    reference = latency_reference([ratio]).key(name)
    settings = {k: v for k, v in latency.items() if k != "calibrate"}
    lm = latency_model(model, x, calibrate=True, **settings)
    target = float(lm.measure_fn(plans[reference]))
    matched = {"reference": reference, "reference_measured_ratio": target, "target_latency": min(target, 1.0),
               "rows": {}}
    return {"target_latency": matched["target_latency"], "latency": lm}, matched


def planned(plan: PruningPlan) -> dict:
    """What the latency-aware plan's search ended at (measured against the unpruned model when planned)."""
    info = plan.options["latency"]
    return {"goal_fraction": info.get("goal_fraction"), "predicted_ratio": info.get("predicted_ratio"),
            "measured_ratio": info.get("measured_ratio")}


ROW_MEANING = {  # what each latency-aware row is, for the caption
    "network_slimming+latency-widths": "network slimming's gamma with every layer at the end of a measured latency "
                                       "step, chosen by the most gamma kept per millisecond (widths='latency')",
    "network_slimming+latency-steps": "network slimming's channels with each layer's kept count moved to the "
                                      "nearest end of its measured latency step (widths='steps')",
}


def latency_note(name: str, table: dict, matched: dict) -> str:
    """The caption's sentence on the latency-aware rows of ``name``: what each is, the latency they were
    planned to, what each plan measured, a miss flagged, and where the layer table came from."""
    how = ("read from the cache" if table["from_cache"] else
           f"built in {table['build_s']:.1f} s ({table['measured_points']} points timed, {table['cached_shapes']} "
           f"of {table['shapes']} layer shapes from the cache)")
    from slimbench.pruning.latency_aware import TOLERANCE, landed

    reference = matched["reference"].split("/", 1)[1].replace("/", " at ")
    parts = []
    for label, ended in matched["rows"].items():
        missed = ""
        if not landed(ended["measured_ratio"], matched["target_latency"]):
            # a miss tilts the comparison: a faster plan had less time to keep accuracy, a slower one more
            faster = ended["measured_ratio"] < matched["target_latency"]
            missed = (f": MISSED by more than {TOLERANCE:.0%}, not at equal latency; it is "
                      f"{'faster' if faster else 'slower'}, so the accuracy comparison favours "
                      f"{reference.split(' at ')[0] if faster else 'it'}")
        meaning = ROW_MEANING.get(label, label)
        parts.append(f"+{label.split('+')[-1]} = {meaning}, measured {ended['measured_ratio']:.3f} when "
                     f"planned{missed}")
    return (f"{name}: " + "; ".join(parts) + f"; each planned to the latency of {reference} (target_latency "
            f"{matched['target_latency']:.3f} of the unpruned model, measured) ({table['backend']}, "
            f"{table['threads']} thread(s), batch {table['batch']}; layer table {how})")


def latency_tables(rows: list[dict], plans: dict[str, PruningPlan], matched: dict[str, dict]) -> dict[str, dict]:
    """model -> the latency table behind its latency-aware rows (run record): key, build time, cache use,
    and the equal-latency match (``equal_latency``: reference case, its measured fraction, the target,
    and per row label (``rows``) the goal, predicted and measured fractions its plan ended at)."""
    aware = {r["model"]: plans[r["case"]].options["latency"] for r in rows
             if r["case"] in plans and plans[r["case"]].options.get("target_latency") is not None}
    return {model: {**info["table"], "predicted_calibrated": True,
                    **({"equal_latency": matched[model]} if model in matched else {})}
            for model, info in aware.items()}
