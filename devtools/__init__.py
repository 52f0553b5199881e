"""Development tools: stand-ins for what only AWS runs, for tests, benchmarks and `make local`.

Never part of a deployment bundle (tests/infra/test_bundles.py checks every bundle):

- `devtools.sqsd`: an sqsd-equivalent driver (an SQS queue -> the worker's web process);
- `devtools.lambda_fake`: Lambda's Invoke with durable-execution naming semantics (the one
  implementation of them), scripted answers and fault injection;
- `devtools.durable_lambda`: the same Invoke semantics in front of AWS's local durable execution
  runner, with its callback and execution-history APIs;
- `devtools.rabbitmq`: a private RabbitMQ node;
- `devtools.local`: `make local`, the whole pipeline on loopback;
- `devtools.stats`: the figures the tests and benchmarks report.
"""
