"""`python -m sluice_cli` (same as the `sluice` console script)."""

from sluice_cli import main

main()
