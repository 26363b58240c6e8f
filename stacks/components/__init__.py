"""L3 constructs: one per capability."""
