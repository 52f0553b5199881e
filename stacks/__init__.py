"""Sluice infrastructure: configuration, constructs (one module per capability) and stacks."""
