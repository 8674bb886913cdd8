"""A live server answers malformed messages with an error reply and keeps serving others."""
from cluster import run_job
from psframe.protocol import PROTOCOL_VERSION

SCRIPT = r'''
import json, sys, time, numpy as np, zmq, msgpack, psframe
from psframe.protocol import Command, codec, ArrayDesc
kv = psframe.create()
kv.init("w", np.zeros(4))
server = kv._servers[0]   # the worker's own socket to the server: send garbage through it
replies = []
bad = [
    [b"not msgpack at all"],
    [msgpack.packb({"v": 999, "cmd": "push"})],
    [msgpack.packb({"v": %d, "cmd": "push", "id": 5, "sender": "worker:0",
                    "arrays": [["w", 0, "float64", [4], 1]]}), b"short"],
    [msgpack.packb({"v": %d, "cmd": "push", "id": 6, "sender": "mallory",
                    "arrays": [["w", 0, "float64", [4], 1]]}), b"\0" * 32],
    [msgpack.packb({"v": %d, "cmd": "set_optimizer", "id": 7, "sender": "worker:0",
                    "body": {"optimizer": {"name": "os.system", "config": {}}}})],
]
for frames in bad:
    server.send_multipart(frames)
    msg = codec.decode(server.recv_multipart())
    replies.append([msg.cmd.value, msg.body.get("name"), msg.body.get("message", "")[:200]])
kv.push("w", np.ones(4))      # the server still serves
out = np.zeros(4); kv.pull("w", out)
kv.close()
print("RESULT " + json.dumps({"replies": replies, "out": out.tolist()}))
''' % (PROTOCOL_VERSION, PROTOCOL_VERSION, PROTOCOL_VERSION)


def test_bad_messages_get_error_replies(tmp_path):
    script = tmp_path / "rogue.py"
    script.write_text(SCRIPT)
    res = run_job(str(script), 1, 1, timeout=60).check().results()[0]
    assert res["out"] == [1.0] * 4
    names = [r[1] for r in res["replies"]]
    assert all(r[0] == "error" for r in res["replies"])
    assert names[:4] == ["ProtocolError"] * 4
    assert "not msgpack" in res["replies"][0][2] and "version" in res["replies"][1][2]
    assert "frame has 5" in res["replies"][2][2] and "mallory" in res["replies"][3][2]
    assert names[4] == "OptimizerError" and "os.system" in res["replies"][4][2]
