"""Storage calls with retries: transient errors are retried with exponential backoff, every
failure ends as a ``DataError`` that names the URL and the fix.

Credentials never appear here: messages carry the URL and the exception text only, never the
storage options.
"""
import dataclasses
import logging
import re
import time

from ..errors import DataError

log = logging.getLogger(__name__)

# Permanent: retrying cannot help.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
              FileExistsError)
# Transient errors from botocore/aiohttp/requests that are not OSError subclasses.
_TRANSIENT_NAME = re.compile(r"Timeout|Connect|Throttl|SlowDown|ServiceUnavailable|"
                             r"IncompleteRead|ResponseStreaming|ClientPayload|ServerDisconnected|"
                             r"ReadError|ProtocolError")


def is_transient(exc):
    """True when ``exc`` is worth retrying (network trouble, throttling, timeouts)."""
    if isinstance(exc, DataError) or isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, OSError):
        return True
    return any(_TRANSIENT_NAME.search(cls.__name__) for cls in type(exc).__mro__)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a transient storage error.

    Attributes:
        attempts: total tries per call (>= 1).
        backoff: seconds before the first retry; doubled each time, capped at ``max_backoff``.
        max_backoff: upper bound of one wait, seconds.
    """
    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0

    def delays(self):
        """The waits between consecutive tries (``attempts - 1`` of them)."""
        return [min(self.backoff * 2 ** i, self.max_backoff) for i in range(self.attempts - 1)]


def translate(exc, url, action, missing_hint=None):
    """Turn a permanent storage exception into a ``DataError`` naming ``url`` and the fix."""
    if isinstance(exc, DataError):
        return exc
    if isinstance(exc, FileNotFoundError):
        hint = missing_hint or "check the URL (bucket, prefix, file name) and endpoint_url"
        return DataError(f"{action} {url}: not found ({exc}); {hint}", url=url)
    if isinstance(exc, PermissionError):
        return DataError(f"{action} {url}: access denied ({exc}); check the credentials and "
                         f"region the job uses (AWS_* environment variables, an AWS profile, an "
                         f"instance role or storage_options) and their permissions", url=url)
    return DataError(f"{action} {url} failed: {type(exc).__name__}: {exc}; check the URL, the "
                     f"endpoint and the network", url=url)


def call(fn, url, action, policy, missing_hint=None):
    """Run ``fn()``; retry transient errors per ``policy``; raise ``DataError`` on failure.

    Args:
        fn: the storage call, without arguments.
        url: the URL it touches (named in the error).
        action: a verb phrase for messages, e.g. ``"reading"``.
        policy: a ``RetryPolicy``.
        missing_hint: the fix to suggest if the object does not exist.
    """
    delays = policy.delays()
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if not is_transient(exc):
                raise translate(exc, url, action, missing_hint) from exc
            if attempt == policy.attempts - 1:
                raise DataError(
                    f"{action} {url} failed {policy.attempts} times, last with "
                    f"{type(exc).__name__}: {exc}; the store is unreachable or overloaded: check "
                    f"endpoint_url and the network, or raise retries=", url=url) from exc
            log.warning("%s %s: %s: %s; retry %d/%d in %.2fs", action, url, type(exc).__name__,
                        exc, attempt + 1, policy.attempts - 1, delays[attempt])
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")
