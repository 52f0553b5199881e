"""`python -m sluice.cli` (same as the `sluice` console script)."""

from sluice.cli import main

main()
