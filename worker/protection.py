"""Scale-in protection for the instance the tasks process runs on, held while a task runs and never
past a task's longest run.

Auto Scaling does not pick an instance protected from scale in when its group scales in
(SetInstanceProtection), so the target tracking policies (.ebextensions/scaling.config) remove
only instances with no task running. The tasks process asks for protection when its first task
starts and gives it up when its last one ends. Bounded:

- a task that runs past `max_s` (one attempt's longest run: a hung step) stops counting at the
  next `refresh()`, which the keep-alive threads call every period;
- a process that dies holding protection clears it when systemd starts it again (`clear()` at
  start), and the drain after SIGTERM clears it on the way out;
- an instance that dies is replaced by the group's health checks, which protection does not stop.

A call that fails is logged and never fails a task: the state AWS holds is then unknown, and the
next change or refresh asks again.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger("sluice.tasks.protection")

# EC2's instance metadata service (IMDSv2: a session token first; the environment disables v1).
IMDS = "http://169.254.169.254/latest"
IMDS_TIMEOUT_S = 2.0


class ScaleInProtection:
    """The protection of instance `instance_id`: on while any hold is younger than `max_s`."""

    def __init__(
        self,
        autoscaling: Any,
        instance_id: str,
        *,
        max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.autoscaling, self.instance_id, self.max_s = autoscaling, instance_id, max_s
        self._clock = clock
        self._holds: dict[str, float] = {}  # key -> when it stops counting
        self._told: bool | None = None  # what AWS was last told successfully (None: unknown)
        self._lock = threading.Lock()

    def hold(self, key: str) -> None:
        """A task (`key`) starts: protect the instance for at most `max_s`."""
        with self._lock:
            self._holds[key] = self._clock() + self.max_s
            self._sync()

    def release(self, key: str) -> None:
        """The task `key` ended: protection stays only while others run."""
        with self._lock:
            self._holds.pop(key, None)
            self._sync()

    def refresh(self) -> None:
        """Drop holds past their time; retry a call that failed."""
        with self._lock:
            self._sync()

    def clear(self) -> None:
        """No task runs here (start, end of a drain): remove protection, whatever was told."""
        with self._lock:
            self._holds.clear()
            self._told = None
            self._sync()

    @property
    def wanted(self) -> bool:
        with self._lock:
            now = self._clock()
            return any(until > now for until in self._holds.values())

    def _sync(self) -> None:
        now = self._clock()
        for key in [k for k, until in self._holds.items() if until <= now]:
            log.warning("a task outlived its protection", extra={"max_s": self.max_s})
            del self._holds[key]
        wanted = bool(self._holds)
        if wanted == self._told:
            return
        try:
            group = self._group()
            if group is None:  # detached or on standby: no group to scale it in
                self._told = None
                return
            self.autoscaling.set_instance_protection(
                InstanceIds=[self.instance_id],
                AutoScalingGroupName=group,
                ProtectedFromScaleIn=wanted,
            )
            self._told = wanted
            log.info("scale-in protection", extra={"protected": wanted, "group": group})
        except (ClientError, BotoCoreError) as exc:
            self._told = None
            log.warning("could not set scale-in protection", extra={"error": str(exc)})

    def _group(self) -> str | None:
        # Asked each time: an immutable deploy starts instances in a temporary group and then
        # moves them into the environment's own.
        found = self.autoscaling.describe_auto_scaling_instances(InstanceIds=[self.instance_id])
        instances = found.get("AutoScalingInstances", [])
        return str(instances[0]["AutoScalingGroupName"]) if instances else None


def instance_id(base: str = IMDS, timeout_s: float = IMDS_TIMEOUT_S) -> str:
    """This EC2 instance's id, from the instance metadata service (IMDSv2)."""
    # The metadata service's fixed http address (or a test's loopback one): no other scheme.
    token_request = urllib.request.Request(  # noqa: S310
        f"{base}/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
    )
    with urllib.request.urlopen(token_request, timeout=timeout_s) as resp:  # noqa: S310
        token = resp.read().decode()
    request = urllib.request.Request(  # noqa: S310
        f"{base}/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310
        return str(resp.read().decode())
