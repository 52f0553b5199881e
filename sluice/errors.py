"""The error classes (README, "Retries and the failure path"): transient errors are retried,
business errors are not."""

from __future__ import annotations


class SluiceError(Exception):
    """Base of every classified error; `code` is a short machine-readable reason."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def error_class(self) -> str:
        return "transient" if isinstance(self, TransientError) else "business"

    def to_dict(self) -> dict[str, str]:
        return {"error_class": self.error_class, "code": self.code, "message": str(self)}


class TransientError(SluiceError):
    """Throttling, timeouts, 5xx: worth retrying with backoff and jitter."""

    code = "transient"


class BusinessError(SluiceError):
    """Bad input, missing object, unsupported format: retrying cannot help."""

    code = "business"


class PoisonMessage(BusinessError):
    """A message that can never be handled: it goes to the DLQ with `code` as its reason."""

    code = "poison"
