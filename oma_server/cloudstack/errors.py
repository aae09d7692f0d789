"""CloudStack failures as DomainErrors.

CloudStack reports an error with an HTTP status equal to its `errorcode` (ApiErrorCode) and a body
`{"<command>response": {"uuidList": [], "errorcode": 431, "cserrorcode": 4350, "errortext": "..."}}`; a failed
async job reports `jobstatus: 2`, `jobresultcode` (the error code in current releases, 530 in older ones) and a
`jobresult` holding only `errorcode` and `errortext` (ApiAsyncJobDispatcher). `from_cloudstack_error` turns either
into one typed exception whose metadata keeps CloudStack's own words (they end up in the gRPC ErrorInfo).

A command the server does not offer fails API verification (ApiServer.verifyRequest): current releases answer
HTTP 401 — with the generic "unable to verify user credentials and/or request signature" when the command does
not exist, with "The given command 'X' either does not exist, is not available for user." when the account's role
does not allow it — and older releases answered 432. The client tells a 401 for an unknown command from a 401 for
bad keys by asking listCapabilities, which every account may call (client.py).

CloudStack's ApiErrorCode values (api/src/main/java/org/apache/cloudstack/api/ApiErrorCode.java):
401 UNAUTHORIZED, 405 METHOD_NOT_ALLOWED, 429 API_LIMIT_EXCEED, 430 MALFORMED_PARAMETER_ERROR,
431 PARAM_ERROR, 432 UNSUPPORTED_ACTION_ERROR, 530 INTERNAL_ERROR, 531 ACCOUNT_ERROR,
532 ACCOUNT_RESOURCE_LIMIT_ERROR, 533 INSUFFICIENT_CAPACITY_ERROR, 534 RESOURCE_UNAVAILABLE_ERROR,
535 RESOURCE_ALLOCATION_ERROR, 536 RESOURCE_IN_USE_ERROR, 537 NETWORK_RULE_CONFLICT_ERROR.
There is no 437 in CloudStack; we still treat it (and any other unknown 4xx) conservatively.
An unknown uuid is a 431 whose text says the entity does not exist; we report that as NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp

from oma_server import errors

# errortext fragments CloudStack uses when the same request may well succeed a little later.
_RETRYABLE_TEXT = re.compile(
    r"try again|retry|timed? ?out|unable to acquire|lock wait|deadlock|concurrent operation|"
    r"temporarily|connection (?:refused|reset)|service unavailable|unable to get answer|"
    r"is being (?:created|processed)|job .* is still running|management server .* (?:restart|shutting)",
    re.IGNORECASE,
)
_NOT_FOUND_TEXT = re.compile(r"entity does not exist|unable to find|does not exist|not found|no such", re.IGNORECASE)
#: ApiServer.commandAvailable's text for a command the account's role does not allow (HTTP 401)
_NOT_AVAILABLE_TEXT = re.compile(r"either does not exist, is not available for user", re.IGNORECASE)


class CloudStackError(errors.DomainError):
    """Base of every CloudStack failure. Concrete subclasses also derive from the matching DomainError."""

    default_reason = "CLOUDSTACK_ERROR"
    #: a retry of the same request may succeed
    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        command: str | None = None,
        errorcode: int | None = None,
        cserrorcode: int | None = None,
        errortext: str | None = None,
        jobid: str | None = None,
        http_status: int | None = None,
        transient: bool | None = None,
        reason: str | None = None,
        **metadata: Any,
    ) -> None:
        super().__init__(
            message,
            reason=reason,
            command=command,
            cloudstack_errorcode=errorcode,
            cloudstack_cserrorcode=cserrorcode,
            cloudstack_errortext=errortext,
            cloudstack_jobid=jobid,
            http_status=http_status,
            **metadata,
        )
        self.command = command
        self.errorcode = errorcode
        self.cserrorcode = cserrorcode
        self.errortext = errortext
        self.jobid = jobid
        self.http_status = http_status
        if transient is not None:
            self.transient = transient


class CloudStackAuthError(CloudStackError, errors.Unauthenticated):
    """401: wrong API key, bad signature or expired request."""

    default_reason = "CLOUDSTACK_UNAUTHENTICATED"


class CloudStackParamError(CloudStackError, errors.InvalidArgument):
    """430/431: CloudStack refused a parameter or the request in the current state of the resource."""

    default_reason = "CLOUDSTACK_PARAM_ERROR"


class CloudStackNotFound(CloudStackError, errors.NotFound):
    """The resource does not exist (CloudStack says so with a 431, or a lookup came back empty)."""

    default_reason = "CLOUDSTACK_NOT_FOUND"


class CloudStackUnsupportedAction(CloudStackError, errors.FailedPrecondition):
    """432: the action is not supported here (for the hypervisor, the state, or this account)."""

    default_reason = "CLOUDSTACK_UNSUPPORTED_ACTION"


class CloudStackUnknownCommand(CloudStackError, errors.Unimplemented):
    """An API command this CloudStack does not offer to the account: unknown in its version, or not allowed by the
    account's role (401 with working keys in current releases, 432 in older ones)."""

    default_reason = "CLOUDSTACK_UNKNOWN_COMMAND"


class CloudStackPermissionDenied(CloudStackError, errors.PermissionDenied):
    """531: the account may not do this."""

    default_reason = "CLOUDSTACK_ACCOUNT_ERROR"


class CloudStackInsufficientCapacity(CloudStackError, errors.ResourceExhausted):
    """429/532/533/535 (and 437): limits, capacity or allocation exhausted."""

    default_reason = "CLOUDSTACK_INSUFFICIENT_CAPACITY"


class CloudStackResourceInUse(CloudStackError, errors.FailedPrecondition):
    """536/537 and other refusals because of the state of a resource."""

    default_reason = "CLOUDSTACK_RESOURCE_IN_USE"


class CloudStackUnavailable(CloudStackError, errors.Unavailable):
    """CloudStack cannot be reached, or answered that it cannot do it now (534, 5xx, retryable 530)."""

    default_reason = "CLOUDSTACK_UNAVAILABLE"
    transient = True


class CloudStackInternalError(CloudStackError, errors.Internal):
    """530 (INTERNAL_ERROR) whose text does not suggest a retry, or a failed async job without detail."""

    default_reason = "CLOUDSTACK_INTERNAL_ERROR"


class CloudStackBadResponse(CloudStackError, errors.Internal):
    """CloudStack answered something that is not a CloudStack API response (wrong URL, proxy page...)."""

    default_reason = "CLOUDSTACK_BAD_RESPONSE"


class CloudStackJobTimeout(CloudStackError, errors.DeadlineExceeded):
    """An async job did not finish in time. The job may still complete in CloudStack."""

    default_reason = "CLOUDSTACK_JOB_TIMEOUT"


class CloudStackJobLost(CloudStackError, errors.Unavailable):
    """CloudStack no longer knows an async job it gave us (its management server restarted, or it purged the job):
    whether the command took effect is unknown. Never a CloudStackNotFound: that the *job* is unknown says nothing
    about the resource the command was about."""

    default_reason = "CLOUDSTACK_JOB_LOST"


class CloudStackRequestTimeout(CloudStackError, errors.DeadlineExceeded):
    """One HTTP request got no answer in time."""

    default_reason = "CLOUDSTACK_REQUEST_TIMEOUT"
    transient = True


def _to_int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return None


def retryable_text(text: str | None) -> bool:
    """Whether a CloudStack errortext says the same request may succeed later."""
    return bool(text and _RETRYABLE_TEXT.search(text))


def from_cloudstack_error(
    payload: Any,
    *,
    command: str,
    http_status: int | None = None,
    jobid: str | None = None,
) -> CloudStackError:
    """The typed exception for an error body (or a failed job's `jobresult`)."""
    body = payload if isinstance(payload, dict) else {}
    errorcode = _to_int(body.get("errorcode")) or http_status
    cserrorcode = _to_int(body.get("cserrorcode"))
    errortext = body.get("errortext")
    if errortext is None and not isinstance(payload, dict) and payload:
        errortext = str(payload)
    errortext = str(errortext) if errortext is not None else None
    where = f" (async job {jobid})" if jobid else ""
    message = f"CloudStack {command} failed{where}: {errortext or 'no error text'} (errorcode {errorcode})"
    kwargs: dict[str, Any] = {
        "command": command,
        "errorcode": errorcode,
        "cserrorcode": cserrorcode,
        "errortext": errortext,
        "jobid": jobid,
        "http_status": http_status,
    }
    if errorcode == 401 and _NOT_AVAILABLE_TEXT.search(errortext or ""):
        return unknown_command(command, errortext, http_status=http_status, errorcode=errorcode)
    if errorcode == 401:
        message = (
            f"CloudStack refused the credentials for {command}: {errortext or 'unauthorized'} "
            "(check the API key, the secret key and the clock)"
        )
    cls, transient = _class_of(errorcode, errortext or "")
    return cls(message, transient=transient, **kwargs)


def _class_of(errorcode: int | None, text: str) -> tuple[type[CloudStackError], bool | None]:
    """The exception class of an error code (with its text where the code alone does not tell), and whether it is
    transient when the class does not decide that itself."""
    if errorcode == 401:
        return CloudStackAuthError, None
    if errorcode in (430, 431):
        return (CloudStackNotFound if _NOT_FOUND_TEXT.search(text) else CloudStackParamError), None
    if errorcode == 432:
        unknown = "does not exist or it is not available" in text
        return (CloudStackUnknownCommand if unknown else CloudStackUnsupportedAction), None
    if errorcode == 405:
        return CloudStackParamError, None
    if errorcode == 531:
        return CloudStackPermissionDenied, None
    if errorcode in (429, 437, 532, 533, 535):
        return CloudStackInsufficientCapacity, errorcode == 429
    if errorcode in (536, 537):
        return CloudStackResourceInUse, None
    if errorcode == 534:
        return CloudStackUnavailable, None
    if errorcode == 530:
        return (CloudStackUnavailable if retryable_text(text) else CloudStackInternalError), None
    if errorcode is not None and 500 <= errorcode < 600:
        # 5xx outside CloudStack's own codes come from a proxy or a restarting management server.
        return (CloudStackUnavailable if errorcode in (500, 502, 503, 504) else CloudStackInternalError), None
    if errorcode is not None and 400 <= errorcode < 500:
        return CloudStackResourceInUse, None
    return CloudStackInternalError, None


def unknown_command(
    command: str, errortext: str | None, *, http_status: int | None = 401, errorcode: int | None = 401
) -> CloudStackUnknownCommand:
    """The command is not offered to this account (the keys work: another command succeeds with them)."""
    return CloudStackUnknownCommand(
        f"CloudStack does not offer {command} to this account: the command does not exist in this CloudStack "
        "version or the account's role does not allow it (CloudStack answered "
        f"{errorcode}: {errortext or 'no error text'}); use an account whose role allows {command}, or a "
        "CloudStack release that has it",
        command=command,
        errorcode=errorcode,
        errortext=errortext,
        http_status=http_status,
    )


def from_transport_error(exc: BaseException, *, command: str) -> CloudStackError:
    """The typed exception for an aiohttp/OS/timeout failure of one request."""
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return CloudStackRequestTimeout(
            f"CloudStack did not answer {command} in time", command=command, error=type(exc).__name__
        )
    return CloudStackUnavailable(
        f"CloudStack cannot be reached for {command}: {exc.__class__.__name__}: {exc}",
        command=command,
        error=type(exc).__name__,
    )


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same request later may succeed (connection trouble, 5xx, retryable 530)."""
    if isinstance(exc, CloudStackError):
        return exc.transient
    return bool(isinstance(exc, aiohttp.ClientConnectionError | asyncio.TimeoutError | ConnectionError))
