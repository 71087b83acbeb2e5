"""API refusals the operator reports to the user instead of retrying silently."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from kubernetes.client.exceptions import ApiException

CONFLICT = 409
INVALID = (400, 422)  # the API server refuses the object itself
# Refusals of a create, and when to try again: a quota may free up, a rate limit passes, a
# webhook or policy may be fixed by an admin.
RETRY_AFTER_S = {400: 60.0, 403: 10.0, 422: 60.0, 429: 5.0}


class AttemptRefusedError(Exception):
    """The API server refused an attempt's Job as invalid; the message is the server's."""


class CreateRefusedError(Exception):
    """A create was refused (quota, policy, rate limit, validation): shown in a condition."""

    def __init__(self, what: str, message: str, retry_after_s: float) -> None:
        super().__init__(f"{what}: {message}")
        self.what, self.message, self.retry_after_s = what, message, retry_after_s


def api_error_message(error: ApiException) -> str:
    """The server's own words (the Status message), else the HTTP reason."""
    try:
        message = json.loads(error.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or error.reason)[:1000]


def retry_after_s(error: ApiException) -> float:
    header = (error.headers or {}).get("Retry-After") if error.headers else None
    try:
        return max(float(header), 1.0) if header else RETRY_AFTER_S[error.status]
    except ValueError:
        return RETRY_AFTER_S[error.status]


@contextmanager
def refusals_as(what: str, invalid_is_final: bool = False) -> Iterator[None]:
    """Turn a refused create into an error that says what was refused and why."""
    try:
        yield
    except ApiException as error:
        if invalid_is_final and error.status in INVALID:
            raise AttemptRefusedError(api_error_message(error)) from error
        if error.status not in RETRY_AFTER_S:
            raise
        message = f"{error.status} {error.reason}: {api_error_message(error)}"
        raise CreateRefusedError(what, message, retry_after_s(error)) from error
