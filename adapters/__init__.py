"""Sluice's edge to AWS, shared by the Lambdas and the worker (both bundles ship it).

errors: the one table of AWS error codes; s3: locations and reads; jobs: the jobs table;
transcribe: Transcribe's jobs and output documents; notifications: the job events on SNS;
logs: the one log schema; slots: concurrency limits (a semaphore with a FIFO queue); joins: the
fan-in of a media item's branches (both in the coordination table); rabbitmq_management:
RabbitMQ's management API (the broker user, the nodes' figures). Imports botocore/boto3,
Powertools' formatter and `sluice`, never the Lambdas, the worker, the stacks or the CLI.
"""
