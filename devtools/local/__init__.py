"""The whole Sluice pipeline on one machine, no AWS account (`make local`, `make local-up`).

`run` starts it and drives the job; `resources` creates what the stacks would (moto), named and
set as they do; `processes` starts the worker's Procfile processes; `transcript` stands in for
speech recognition; `view` shows the run; `report` sums it up.
"""
