"""A server's checkpoint save or load, run in a thread so the server keeps sending heartbeats
(and answering pulls and stats) while storage is slow.

A save writes the shard's arrays as they are, without copying them, so nothing may change
them until it is done: the service holds back every message that would (``HELD``) and
handles those once the task has finished. A load reads every file it needs in the thread,
then ``finish`` (on the service's thread) puts the values into the shard in one go.
"""
import concurrent.futures
import threading

from ..checkpoint.files import Store
from ..checkpoint.manifest import Checkpoint
from ..checkpoint.shards import write_shard
from ..errors import ProtocolError
from ..optim import to_spec
from ..protocol import Command
from . import snapshot

#: messages that change a shard, held back while a checkpoint task runs
HELD = frozenset({Command.INIT, Command.PUSH, Command.PUSHPULL, Command.SET_OPTIMIZER,
                  Command.SAVE_CHECKPOINT, Command.LOAD_CHECKPOINT})


def _target(body):
    url, options = body.get("url"), body.get("storage_options") or {}
    if not isinstance(url, str) or not url or not isinstance(options, dict):
        raise ProtocolError(f"checkpoint body needs url (a str) and storage_options (a map), got "
                            f"{type(url).__name__} and {type(options).__name__}")
    return url, options


def _ranges(body):
    raw = body.get("ranges", [])
    try:
        return {(k, int(p)): (int(a), int(b)) for k, p, a, b in raw}
    except (TypeError, ValueError):
        raise ProtocolError("load_checkpoint body.ranges is not a list of [key, part, start, "
                            "stop]") from None


class CheckpointTask:
    """One save or load in flight; ``token`` is whatever the service needs to reply."""

    def __init__(self, token, future, finish):
        self.token, self.future, self._finish = token, future, finish

    def done(self):
        return self.future.done()

    def finish(self):
        """The reply body (on the service's thread); raises the task's error."""
        return self._finish(self.future.result())


def _in_thread(fn):
    """A future of ``fn()`` run on a daemon thread (a hung store must not keep the server
    from exiting when its job ends)."""
    future = concurrent.futures.Future()

    def run():
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)
    threading.Thread(target=run, daemon=True, name="psframe-checkpoint").start()
    return future


def start_save(shard, body, server_rank, token):
    """Snapshot ``shard`` now and write it in the background; the reply body is
    ``{"index": the shard's index record, "optimizer": spec or None}``."""
    url, options = _target(body)
    entries = snapshot.export(shard)         # raises at once if a key is not ready
    spec = None if shard.optimizer is None else to_spec(shard.optimizer)
    future = _in_thread(lambda: write_shard(Store(url, options), server_rank, entries))
    return CheckpointTask(token, future, lambda index: {"index": index, "optimizer": spec})


def start_load(shard, body, token):
    """Read the files this shard needs in the background, then restore it in ``finish``."""
    url, options = _target(body)
    ranges = _ranges(body)
    name = None if shard.optimizer is None else to_spec(shard.optimizer)["name"]

    def read():
        ckpt = Checkpoint(url, options)
        snapshot.prefetch(shard, ckpt, ranges, name)
        return ckpt

    def finish(ckpt):
        snapshot.restore(shard, ckpt, ranges, name)
        return {}
    return CheckpointTask(token, _in_thread(read), finish)
