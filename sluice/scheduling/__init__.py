"""Periodic tasks as declared: schedules, the registry, ticks and the broker names they use.

The contract side of the scheduler: the worker's `scheduler` process runs the ticks
(worker/scheduler), the worker's web process serves cron.yaml's POSTs, the stacks name the
alarms after the tasks and the CLI lists them, all from these definitions.
"""
