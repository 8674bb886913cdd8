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
    [msgpack.packb({"v": %d, "cmd": "pull", "id": 8, "sender": "worker:0", "body": {"meta": 5}})],
    [msgpack.packb({"v": %d, "cmd": "init", "id": 9, "sender": "worker:0",
                    "body": {"meta": [["z", 0, "float64", [4], 0]], "sync": "yes"}})],
    [msgpack.packb({"v": %d, "cmd": "push", "id": 10, "sender": "worker:0",
                    "arrays": [["w", 0, "float64", [0, 2 ** 62], 1]]}), b""],
    [msgpack.packb({"v": %d, "cmd": "set_optimizer", "id": 11, "sender": "worker:0",
                    "body": {"optimizer": 3}})],
    [msgpack.packb({"v": True, "cmd": "push", "id": 12, "sender": "worker:0"})],
]
for frames in bad:
    server.send_multipart(frames)
    msg = codec.decode(server.recv_multipart())
    replies.append([msg.cmd.value, msg.body.get("name"), msg.body.get("message", "")[:200]])
kv.push("w", np.ones(4))      # the server still serves
out = np.zeros(4); kv.pull("w", out)
kv.close()
print("RESULT " + json.dumps({"replies": replies, "out": out.tolist()}))
''' % ((PROTOCOL_VERSION,) * 7)


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
    assert "body.meta" in res["replies"][5][2] and "sync" in res["replies"][6][2]
    assert "2**48" in res["replies"][7][2] and names[8] == "OptimizerError"
    assert "version" in res["replies"][9][2]


SCHEDULER_SCRIPT = r'''
import json, numpy as np, msgpack, zmq, psframe
from psframe.protocol import codec
kv = psframe.create()
rogue = zmq.Context.instance().socket(zmq.DEALER)
rogue.setsockopt(zmq.LINGER, 0)
rogue.connect(kv.config.scheduler)
bad = [{"cmd": "register", "body": {"role": "worker", "rank": "0", "host": "h"}},
       {"cmd": "place", "sender": "worker:0", "body": {"keys": [["k", "big", 1]]}},
       {"cmd": "barrier", "sender": "mallory"},
       {"cmd": "push"}]
replies = []
for i, h in enumerate(bad):
    rogue.send(msgpack.packb(dict({"v": 1, "id": 100 + i, "sender": "worker:0"}, **h)))
    assert rogue.poll(5000), "the scheduler did not answer"
    m = codec.decode(rogue.recv_multipart())
    replies.append([m.cmd.value, m.id, m.body.get("message", "")])
rogue.close()
kv.init("w", np.zeros(2)); kv.push("w", np.ones(2)); out = np.zeros(2); kv.pull("w", out)
kv.barrier(); kv.close()
print("RESULT " + json.dumps({"replies": replies, "out": out.tolist()}))
'''


def test_scheduler_answers_bad_messages_and_the_job_goes_on(tmp_path):
    script = tmp_path / "rogue_scheduler.py"
    script.write_text(SCHEDULER_SCRIPT)
    job = run_job(str(script), 2, 1, timeout=60).check()
    res = job.results()[0]
    assert res["out"] == [2.0, 2.0]
    assert [r[0] for r in res["replies"]] == ["error"] * 4
    assert [r[1] for r in res["replies"]] == [100, 101, 102, 103]
    assert "body.rank" in res["replies"][0][2] and "body.keys" in res["replies"][1][2]
    assert "mallory" in res["replies"][2][2] and "does not handle" in res["replies"][3][2]
