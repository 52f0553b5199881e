"""Stateless stack: compute and monitoring, replaceable at any deployment.

It finds the stateful stack's resources by name (`StatefulResources`), never through an export.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from sluice import catalog, naming
from sluice.settings import SchedulerSettings
from stacks import coordination, grants
from stacks.broker_user import BrokerUser
from stacks.config import EnvConfig
from stacks.declarations import WORKFLOWS_ROOT
from stacks.heavy_steps import HeavySteps
from stacks.monitoring import Monitoring
from stacks.stateful import StatefulResources
from stacks.worker_env import WorkerEnvironment
from stacks.workflows import Workflows


class StatelessStack(Stack):
    """Lambdas, the worker environment, alarms and the dashboard of one environment."""

    def __init__(  # type: ignore[no-untyped-def]
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        workflows_root: Path = WORKFLOWS_ROOT,
        **kwargs,
    ) -> None:
        super().__init__(
            scope, construct_id, termination_protection=config.termination_protection, **kwargs
        )
        stateful = StatefulResources(self, "Stateful", config=config)
        self.monitoring = Monitoring(self, "Monitoring", config=config)
        self.monitoring.watch_queue(
            "Events",
            queue=stateful.events.queue,
            dlq=stateful.events.dlq,
            max_age_s=config.alarms.queue_age_s,
            backlog="events-queue-backlog",
        )
        # Durable workflows and their step handlers, one per declaration under `workflows_root`
        # (lambdas/workflows/<name>/workflow.toml); `aliases` is what the worker invokes.
        self.workflows = Workflows(
            self,
            "Workflows",
            config=config,
            media=stateful.media,
            events=stateful.events,
            key=stateful.key,
            root=workflows_root,
        )
        for name, step in self.workflows.steps.items():
            self.monitoring.watch_step(name, step.function)
        # Heavy steps (issue 5): transcode/embed workflows whose work the worker's tasks process does.
        self.heavy = HeavySteps(
            self,
            "HeavySteps",
            config=config,
            workflows=self.workflows,
            media=stateful.media,
            tasks=stateful.tasks,
            events=stateful.events,
            key=stateful.key,
        )
        # Every workflow is alarmed on; `sluice jobs show` finds its executions by its output.
        # Each may take concurrency slots and join branches in the coordination table (issue 13).
        for name, workflow in {**self.workflows.workflows, **self.heavy.workflows}.items():
            coordination.grant(workflow, config=config, key=stateful.key)
            self.monitoring.watch_workflow(name, workflow.function)
            CfnOutput(self, catalog.workflow_output(name), value=workflow.function.function_name)
            # `sluice runs cancel` runs the declared failure handler of a run it stops.
            handler = self.workflows.steps[self.workflows.declarations[name].on_failure]
            CfnOutput(
                self, catalog.failure_handler_output(name), value=handler.function.function_name
            )
        self.monitoring.watch_queue(
            "Tasks",
            queue=stateful.tasks.queue,
            dlq=stateful.tasks.dlq,
            max_age_s=config.alarms.tasks_queue_age_s,
            backlog="tasks-queue-backlog",
        )
        # The EB worker: sqsd feeds it the events queue; it starts the workflows' aliases. Its
        # tasks process (worker/tasks.py) and scheduler (worker/scheduler) read their own settings.
        worker_env = dict(self.heavy.worker_environment)
        # The workflows an event may cancel (declared `cancel_on`): the worker stops their runs
        # and runs their failure handlers (worker/cancels.py).
        every_workflow = {**self.workflows.workflows, **self.heavy.workflows}
        declarations = self.workflows.declarations
        cancellable = {n: wf for n, wf in every_workflow.items() if declarations[n].cancel_on}
        handlers = {n: self.workflows.steps[declarations[n].on_failure].alias for n in cancellable}
        if cancellable:
            worker_env |= coordination.canceller_environment(handlers)
        if stateful.broker is not None:
            worker_env |= stateful.broker.worker_environment()
            worker_env |= SchedulerSettings.render(
                events_queue_url=stateful.events.queue.queue_url,
                coordination_table=naming.coordination_table(config.name),  # the tick ledger
            )
        self.worker = WorkerEnvironment(
            self,
            "Worker",
            config=config,
            vpc=stateful.vpc,
            events=stateful.events,
            tasks=stateful.tasks,
            workflow_aliases={**self.workflows.aliases, **self.heavy.aliases},
            media_bucket=stateful.media.bucket_name,
            key=stateful.key,
            extra_environment=worker_env,
            routes=self.workflows.routes,
        )
        self.heavy.grant_heavy_steps(self.worker.process_roles["tasks"])
        if cancellable:
            coordination.grant_canceller(
                self.worker,
                self.worker.process_roles["web"],
                workflows=cancellable,
                failure_handlers=handlers,
                config=config,
            )
        self.monitoring.watch_worker(
            environment_name=self.worker.environment_name,
            metrics_namespace=self.worker.metrics_namespace,
        )
        # The broker scheduler (issue 7): only the worker reaches the broker; broker alarms.
        if stateful.broker is not None:
            stateful.broker.allow_from(self.worker.security_group)
            access = stateful.broker.grant_connect(
                self,
                self.worker.process_roles["scheduler"],
                events_queue=stateful.events.queue,
                ledger=coordination.ledger_statements(config, stateful.key),
            )
            # An event task's tick first asks whether its previous tick's runs still run
            # (worker/scheduler/overlap.py): any workflow's, through its live alias.
            grants.allow(
                access,
                ["lambda:ListDurableExecutionsByFunction"],
                [
                    arn
                    for _, wf in sorted(every_workflow.items())
                    for arn in (wf.function.function_arn, wf.alias.function_arn)
                ],
                sid="TickRuns",
            )
            stateful.broker.watch(self.monitoring)
            # The scheduler connects as its own, non-admin user (issue 11), made at deploy: the
            # worker starts once it exists.
            self.broker_user = BrokerUser(
                self, "BrokerUser", config=config, broker=stateful.broker, vpc=stateful.vpc
            )
            self.worker.environment.node.add_dependency(self.broker_user.resource)
