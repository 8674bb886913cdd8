"""A real AWS endpoint for tests: ``moto_server`` in a subprocess on 127.0.0.1 (or, with ``prefix``,
inside a test network namespace), with moto's request recorder so tests can see which client
(User-Agent) fetched which object, or which API calls were made."""
import base64
import json
import os
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from conftest import require
from psframe.transport.addresses import free_port

MOTO = os.path.join(os.path.dirname(os.path.realpath(__import__("sys").executable)), "moto_server")
REGION = "us-west-2"     # us-east-1 + s3fs mkdir -> an invalid location-constraint error
KEY, SECRET = "testing", "testing-secret-do-not-log"


class MotoServer:
    """One moto_server process. ``requests()`` parses its recording (JSON lines).

    ``prefix`` runs it under a command such as ``ip netns exec NS``, listening on ``host`` there;
    readiness is then read from its log, so no request crosses from this namespace."""

    def __init__(self, workdir, start_timeout=20.0, host="127.0.0.1", prefix=()):
        self.recording = os.path.join(workdir, "moto-recording.jsonl")
        self.log_path = os.path.join(workdir, "moto.log")
        env = dict(os.environ, MOTO_RECORDER_FILEPATH=self.recording)
        env.pop("MOTO_ENABLE_RECORDING", None)
        last = None
        for _ in range(3):   # the free port may be taken between free_port() and bind
            self.port = free_port()
            self.endpoint = f"http://{host}:{self.port}"
            self._prefixed = bool(prefix)
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen([*prefix, MOTO, "-H", host, "-p", str(self.port)],
                                         stdout=self._log, stderr=subprocess.STDOUT, env=env)
            try:
                self._wait_ready(start_timeout)
                return
            except RuntimeError as exc:
                last = exc
                self.stop()
        raise last

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited {self.proc.returncode}: {self.log_tail()}")
            if self._prefixed:
                if f"Running on {self.endpoint}" in self.log_tail():
                    return
                time.sleep(0.1)
                continue
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"moto_server not ready in {timeout}s: {self.log_tail()}")

    def log_tail(self):
        with open(self.log_path, "rb") as f:
            return f.read()[-2000:].decode(errors="replace")

    def _post(self, path):
        req = urllib.request.Request(self.endpoint + path, data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def start_recording(self):
        """Forget earlier requests and record from now on."""
        self._post("/moto-api/recorder/reset-recording")
        self._post("/moto-api/recorder/start-recording")

    def stop_recording(self):
        self._post("/moto-api/recorder/stop-recording")

    def _recorded(self):
        """Every recorded request (moto's recorder entries), oldest first."""
        if not os.path.exists(self.recording):
            return
        with open(self.recording) as f:
            for line in f:
                yield json.loads(line)

    def requests(self):
        """Recorded requests as dicts: method, bucket, key, range, agent."""
        out = []
        for entry in self._recorded():
            path = urllib.parse.unquote(urllib.parse.urlsplit(entry["url"]).path).lstrip("/")
            bucket, _, key = path.partition("/")
            headers = {k.lower(): v for k, v in entry["headers"].items()}
            out.append({"method": entry["method"], "bucket": bucket, "key": key,
                        "range": headers.get("range"), "agent": headers.get("user-agent", "")})
        return out

    def calls(self):
        """Recorded AWS query-protocol calls as dicts of their form fields (``Action`` etc.)."""
        out = []
        for entry in self._recorded():
            body = entry.get("body") or ""
            if entry.get("body_encoded"):
                body = base64.b64decode(body).decode(errors="replace")
            fields = dict(urllib.parse.parse_qsl(body))
            if "Action" in fields:
                out.append(fields)
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def storage_options(endpoint, **extra):
    """s3fs options for the test endpoint (credentials as storage_options)."""
    return dict(endpoint_url=endpoint, key=KEY, secret=SECRET,
                client_kwargs={"region_name": REGION}, **extra)


def aws_env(endpoint):
    """The same, as the standard AWS environment variables (for subprocess workers)."""
    return {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": REGION, "PSF_TEST_S3_ENDPOINT": endpoint}


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """A running moto_server for the module; killed and reaped afterwards."""
    try:
        import s3fs  # noqa: F401
    except ImportError:
        s3fs = None
    require(s3fs is not None, "python package s3fs")
    yield from running_moto(tmp_path_factory)


def running_moto(tmp_path_factory):
    """Body of a moto fixture: a moto_server for the module, stopped and reaped afterwards."""
    require(os.path.exists(MOTO), "moto_server (pip install 'moto[server]')")
    server = MotoServer(str(tmp_path_factory.mktemp("moto")))
    try:
        yield server
    finally:
        server.stop()
