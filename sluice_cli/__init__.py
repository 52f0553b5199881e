"""`sluice`: the operator CLI (send events, follow a job, list/show/cancel/replay runs, work the
DLQs, see the schedules and what flow control holds back).

It runs against an AWS account (`--profile`, `--region`) or the local pipeline's endpoints
(`--endpoint-url` / SLUICE_ENDPOINT_URL). It is an operator tool installed with the dev
environment; no Lambda or worker bundle ships it.
"""

from __future__ import annotations

import click

from sluice_cli.aws import Aws, default_endpoint
from sluice_cli.dlq import dlq
from sluice_cli.flow import flow
from sluice_cli.jobs import jobs
from sluice_cli.runs_cli import runs
from sluice_cli.schedules import schedules
from sluice_cli.send import send


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--env",
    "env",
    default="dev",
    show_default=True,
    envvar="SLUICE_ENV",
    help="Environment: resources are named Sluice-<env>-….",
)
@click.option("--profile", help="AWS profile (else AWS_PROFILE or the default chain).")
@click.option("--region", help="AWS region (else AWS_REGION or the profile's).")
@click.option(
    "--endpoint-url",
    default=default_endpoint,
    help="Send every AWS call here, e.g. the local pipeline's moto (SLUICE_ENDPOINT_URL).",
)
@click.pass_context
def cli(
    ctx: click.Context, env: str, profile: str | None, region: str | None, endpoint_url: str | None
) -> None:
    """Operate Sluice: send events, follow jobs, work the dead-letter queues."""
    ctx.obj = Aws(env=env, profile=profile, region=region, endpoint_url=endpoint_url)


cli.add_command(send)
cli.add_command(jobs)
cli.add_command(runs)
cli.add_command(dlq)
cli.add_command(schedules)
cli.add_command(flow)


def main() -> None:
    cli(prog_name="sluice")
