"""Plan -> prune: criteria over gamma, the plan (pure data), surgery, beta folding, checkpoints, L1 sparsity."""
