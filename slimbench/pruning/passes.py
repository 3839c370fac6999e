"""Plans across pruning passes: every plan a pruned model carries is against the original architecture.

The paper's iterative scheme prunes, fine-tunes and prunes again. The second plan is made on the
pruned model, so its masks cover only the channels the first pass kept; composing it with the
first pass's plan gives masks over the original channels, which ``load_pruned_model`` can replay
on the unpruned architecture. ``prune`` does this itself: the result's ``slimbench_plan`` is
always against the original model.
"""

from __future__ import annotations

import dataclasses

import torch

from slimbench.core.errors import SlimbenchValueError
from slimbench.pruning.plan import PruningPlan

__all__ = ["compose"]


def compose(earlier: PruningPlan, later: PruningPlan) -> PruningPlan:
    """``later`` (made on the model ``earlier`` produced) as one plan against the original model."""
    masks = {name: torch.as_tensor(mask, dtype=torch.bool).clone() for name, mask in earlier.masks.items()}
    for name, mask in later.masks.items():
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if name not in masks:
            masks[name] = mask.clone()
            continue
        kept = masks[name]
        if int(kept.sum()) != mask.numel():
            raise SlimbenchValueError(
                f"cannot compose pruning passes: the later plan's mask for {name!r} has {mask.numel()} entries, "
                f"but the earlier pass kept {int(kept.sum())} of its channels; was the later plan made on "
                "another model?")
        kept[kept.clone()] = mask
    passes = int(earlier.options.get("passes", 1)) + 1
    layers = [{**row, "after": int(masks[row["bn"]].sum()) if row.get("bn") in masks else row.get("after")}
              for row in earlier.layers]
    return dataclasses.replace(
        later, masks=masks, input_shapes=earlier.input_shapes,
        options={**later.options, "passes": passes},
        branches=list(earlier.branches) + [b for b in later.branches if b not in earlier.branches],
        selectors=list(earlier.selectors) + [s for s in later.selectors if s not in earlier.selectors],
        macs_before=earlier.macs_before or later.macs_before, layers=layers or later.layers)
