"""The adapters against moto: the resources the steps' tests make (jobs table, media bucket,
notifications topic with a queue subscribed), from tests/lambdas/conftest.py."""

from tests.lambdas.conftest import aws  # noqa: F401
