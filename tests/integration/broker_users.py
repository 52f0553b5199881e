"""The scheduler's broker user on a test node, made as the deploy makes it: the provisioning
Lambda's management client, the deployed tags, vhost and permissions, and an AMQP URL that logs
in as that user (test_broker_user.py, test_broker_metrics.py)."""

from __future__ import annotations

from urllib.parse import quote

from adapters.rabbitmq_management import Management, User
from devtools.rabbitmq import RabbitNode
from sluice.scheduling.names import (
    SCHEDULER_PERMISSIONS,
    SCHEDULER_TAGS,
    SCHEDULER_USER,
    SCHEDULER_VHOST,
)


def scheduler_user(password: str, name: str = SCHEDULER_USER) -> User:
    """The user exactly as the stack asks for it (the deployed tags, vhost and permissions)."""
    return User(
        name=name,
        password=password,
        tags=SCHEDULER_TAGS,
        vhost=SCHEDULER_VHOST,
        configure=SCHEDULER_PERMISSIONS.configure,
        write=SCHEDULER_PERMISSIONS.write,
        read=SCHEDULER_PERMISSIONS.read,
    )


def admin(rabbit: RabbitNode) -> Management:
    """The node's administrator (the test node's default user), as the provisioning Lambda is."""
    return Management(rabbit.management_url, "guest", "guest")


def amqp_url(rabbit: RabbitNode, user: str, password: str) -> str:
    return f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{rabbit.port}/%2F"
