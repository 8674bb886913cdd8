"""boto3 sessions and clients that follow the standard AWS environment (``AWS_PROFILE``,
``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``, credentials from the environment, a
profile or the instance role), with bounded timeouts; and the one error type of psframe-deploy."""
import os


class DeployError(Exception):
    """A failure psframe-deploy reports as one line naming the cause and the fix."""


def session(region=None):
    """A boto3 session for ``region`` (else the environment's or the profile's).

    Raises:
        DeployError: boto3 is not installed, the profile is unknown, or no region is set.
    """
    try:
        import boto3
        import botocore.exceptions
    except ImportError:
        raise DeployError("psframe-deploy needs boto3: pip install 'psframe[deploy]'") from None
    try:
        # boto3 reads AWS_DEFAULT_REGION and the profile's region, not AWS_REGION
        s = boto3.session.Session(region_name=region or os.environ.get("AWS_REGION") or None)
        region_name = s.region_name
    except botocore.exceptions.ProfileNotFound as exc:
        raise DeployError(f"{exc}; set AWS_PROFILE to a profile in ~/.aws/config") from None
    if not region_name:
        raise DeployError("no AWS region: pass --region, or set AWS_REGION or a region in your "
                          "AWS profile")
    return s


def client(sess, service):
    """A client of ``service`` with connect/read timeouts and standard retries (boto3 itself
    takes ``AWS_ENDPOINT_URL``, e.g. a moto server)."""
    from botocore.config import Config
    return sess.client(service, config=Config(connect_timeout=10, read_timeout=60,
                                              retries={"max_attempts": 4, "mode": "standard"}))


def error_code(exc):
    """The AWS error code of a botocore ``ClientError`` (``""`` for anything else)."""
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def describe(exc):
    """One line for an AWS error: code and message (never request parameters)."""
    err = getattr(exc, "response", {}).get("Error", {})
    if err:
        text = f"{err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."
