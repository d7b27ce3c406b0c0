"""Everything made ahead of serving: downloaded weights, random-weight test checkpoints."""
