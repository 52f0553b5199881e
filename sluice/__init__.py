"""Sluice contracts shared by producers, the worker and the Lambdas: one definition of each."""
