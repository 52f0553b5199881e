"""The whole Sluice pipeline on one machine, no AWS account (`make local`, `make local-up`)."""
