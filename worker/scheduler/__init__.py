"""The scheduler process: runs the declared periodic tasks' ticks on RabbitMQ (sluice.scheduling
declares them), serves cron.yaml's POSTs without a broker, and publishes the broker figures."""
