"""Per-job credentials and ZAP authentication at the socket level: who gets in, under which
identity, and how refusals are counted; the launcher's part (each process its own secret, in
its environment and never in an argv)."""
import os
import stat
import time

import pytest
import zmq

from psframe import config as envc
from psframe.errors import ConfigError
from psframe.transport import auth, credentials, sockets


@pytest.mark.parametrize("mechanism", ["curve", "token"])
def test_each_process_gets_only_its_own_secret(mechanism):
    names = credentials.identities(2, 1)
    creds = credentials.generate(mechanism, names)
    assert set(creds) == {"scheduler", "server:0", "worker:0", "worker:1"}
    secrets_ = {c.secret for c in creds.values()}
    assert len(secrets_) == 4
    for name, c in creds.items():
        assert c.identity == name
        text = c.to_text()
        assert credentials.from_text(text) == c
        others = [o.secret for o in creds.values() if o is not c]
        assert not any(s in text for s in others)        # nobody else's secret travels with it
    if mechanism == "token":
        w0 = creds["worker:0"]
        assert w0.verify_token("worker:1", creds["worker:1"].secret)
        assert not w0.verify_token("worker:1", w0.secret)
        assert not w0.verify_token("server:0", creds["worker:1"].secret)


def test_credentials_file_must_be_private(tmp_path):
    creds = credentials.generate("token", ["worker:0"])["worker:0"]
    path = str(tmp_path / "creds")
    credentials.write_file(path, creds)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert credentials.read_file(path) == creds
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        credentials.read_file(path)
    with pytest.raises(ConfigError, match="does not hold psframe credentials"):
        credentials.from_text("{}")


def test_config_needs_credentials_when_security_is_asked_for(tmp_path):
    env = {envc.ROLE: "worker", envc.SCHEDULER: "tcp://127.0.0.1:9", envc.RANK: "0",
           envc.SECURITY: "curve"}
    with pytest.raises(ConfigError, match="no credentials"):
        envc.from_env(env)
    creds = credentials.generate("token", ["worker:0"])["worker:0"]
    cfg = envc.from_env(dict(env, **{envc.CREDENTIALS: creds.to_text()}))
    assert creds.secret not in repr(cfg)
    with pytest.raises(ConfigError, match="credentials are for token"):
        auth.from_config(cfg)
    path = str(tmp_path / "c")
    credentials.write_file(path, creds)
    cfg = envc.from_env(dict(env, **{envc.SECURITY: "token", envc.CREDENTIALS_FILE: path}))
    assert auth.from_config(cfg).identity == "worker:0"


def _exchange(server_creds, client_creds, peer="server:0"):
    """One message from a client with ``client_creds`` to a ROUTER with ``server_creds``:
    returns (User-Id or None if nothing arrived, connections refused)."""
    ctx = zmq.Context()
    security = auth.Security(server_creds)
    try:
        router, port = sockets.router_bind_random(ctx, "127.0.0.1", security)
        watch = auth.HandshakeWatch(router)
        dealer = sockets.dealer(ctx, f"tcp://127.0.0.1:{port}", security=auth.Security(client_creds),
                                peer=peer)
        dealer.send(b"hello")
        got = None
        if router.poll(1500):
            frames = router.recv_multipart(copy=False)
            got = security.sender(frames[1])
        deadline = time.monotonic() + 2
        while got is None and not watch.poll() and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = watch.poll()
        watch.close()
        dealer.close(0)
        router.close(0)
        return got, refused
    finally:
        security.close()
        ctx.term()


@pytest.mark.parametrize("mechanism", ["curve", "token"])
def test_zap_admits_the_jobs_processes_under_their_identity(mechanism):
    creds = credentials.generate(mechanism, credentials.identities(2, 1))
    other = credentials.generate(mechanism, credentials.identities(2, 1))
    assert _exchange(creds["server:0"], creds["worker:1"]) == ("worker:1", 0)
    got, refused = _exchange(creds["server:0"], other["worker:1"])       # another job's
    assert got is None and refused >= 1
    got, refused = _exchange(creds["server:0"], None)                    # no credentials
    assert got is None and refused >= 1


def test_token_of_one_process_does_not_open_another_identity():
    creds = credentials.generate("token", credentials.identities(2, 1))
    forged = credentials.Credentials("token", "worker:0", creds["worker:1"].secret, "", creds["worker:1"].peers)
    got, refused = _exchange(creds["server:0"], forged)
    assert got is None and refused >= 1


def test_a_frame_above_the_limit_is_refused_before_sending():
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        auth.Security(None, max_message_bytes=1 << 20).connect(sock, "server:0")
        with pytest.raises(ConfigError, match="PSFRAME_MAX_MESSAGE_BYTES=1048576"):
            sockets.send_frames(sock, [b"header", bytes((1 << 20) + 1)])
        sock.close(0)
    finally:
        ctx.term()


def test_launcher_gives_each_process_its_own_credentials_and_defaults_by_hosts(tmp_path, caplog):
    from psframe_launcher.config import LaunchConfig
    from psframe_launcher.hosts import Host
    from psframe_launcher.plan import make_plan
    from psframe_launcher.supervisor import secure, security_mode
    config = LaunchConfig(num_workers=3, script="train.py", num_servers=2)
    one, three = [Host("127.0.0.1", 4)], [Host("h1", 1), Host("h2", 1), Host("h3", 1)]
    assert security_mode(config, one) == "token" and security_mode(config, three) == "curve"
    plan = secure(make_plan(config, three, 1234), config)
    seen = set()
    for spec in plan.specs:
        creds = credentials.from_text(spec.env[envc.CREDENTIALS])
        assert spec.env[envc.SECURITY] == "curve" and creds.identity == spec.identity
        assert not any(creds.secret in part for part in spec.command)
        seen.add(creds.secret)
    assert len(seen) == len(plan.specs) == 6
    none = LaunchConfig(num_workers=1, script="train.py", security="none")
    with caplog.at_level("WARNING"):
        plan = secure(make_plan(none, one, 1234), none)
    assert "--security none" in caplog.text
    assert all(envc.CREDENTIALS not in s.env and s.env[envc.SECURITY] == "none" for s in plan.specs)
    with pytest.raises(ConfigError, match="--env PSFRAME_CREDENTIALS"):
        make_plan(LaunchConfig(num_workers=1, script="t.py", env=(("PSFRAME_CREDENTIALS", "x"),)), one, 1)
