"""The scheduler's non-admin RabbitMQ user on Amazon MQ, made through the management API."""
