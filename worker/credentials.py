"""Each worker process calls AWS with its own IAM role, assumed from the instance's.

The instance profile holds only what Elastic Beanstalk's agents and sqsd need. The web, tasks and
scheduler processes each assume the role that holds what that process calls (the stack creates
them and names each in `SLUICE_ROLE_ARN_<PROCESS>`): the process that runs ffmpeg over user
uploads cannot start workflows or read the broker's secret with its credentials. botocore's own
AssumeRoleCredentialFetcher refreshes the role's credentials before they expire, as it does for
a profile with `role_arn`. Without the variable (tests, make local) the process keeps the
default credential chain.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

import boto3
import botocore.session
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    CredentialProvider,
    DeferredRefreshableCredentials,
)
from botocore.exceptions import NoCredentialsError

from sluice.naming import role_variable

__all__ = ["LazyCredentials", "process_session", "role_variable"]


class LazyCredentials:
    """A session's credentials, resolved at first use (then refreshed by botocore).

    A slow instance metadata service must not keep a process from starting: a call made without
    credentials fails (and is retried by its caller), the process itself comes up.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.resolved: Any = None
        self.lock = threading.Lock()

    def get_frozen_credentials(self) -> Any:
        if self.resolved is None:
            with self.lock:
                if self.resolved is None:
                    self.resolved = self.session.get_credentials()
        if self.resolved is None:
            raise NoCredentialsError()
        return self.resolved.get_frozen_credentials()


class _ProcessRole(CredentialProvider):
    METHOD = "sluice-process-role"
    CANONICAL_NAME = "SluiceProcessRole"

    def __init__(self, fetcher: AssumeRoleCredentialFetcher) -> None:
        self._fetcher = fetcher

    def load(self) -> DeferredRefreshableCredentials:
        return DeferredRefreshableCredentials(
            refresh_using=self._fetcher.fetch_credentials, method=self.METHOD
        )


def process_session(
    process: str, environ: Mapping[str, str] | None = None
) -> botocore.session.Session:
    """The botocore session of worker process `process`, made boto3's default session too."""
    env = os.environ if environ is None else environ
    session = botocore.session.get_session()
    role_arn = env.get(role_variable(process))
    if role_arn:
        # The source is the default chain of a session of its own (the instance profile on EB).
        fetcher = AssumeRoleCredentialFetcher(
            client_creator=session.create_client,
            source_credentials=LazyCredentials(botocore.session.get_session()),
            role_arn=role_arn,
            extra_args={"RoleSessionName": f"sluice-{process}-{socket.gethostname()}"[:64]},
        )
        session.get_component("credential_provider").insert_before("env", _ProcessRole(fetcher))
    boto3.setup_default_session(botocore_session=session)
    return session
