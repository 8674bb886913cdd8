"""The ``local`` kind: the same API in one process, driving a server shard directly (no
sockets, no threads), so a serial training script runs unchanged."""
from .. import arrays
from ..protocol import ArrayDesc
from ..server.shard import ShardState
from .base import KVStore


class LocalKVStore(KVStore):
    type = "local"

    def __init__(self, sync=True):
        super().__init__()
        self.shard = ShardState(num_workers=1, sync=sync)

    def _run(self, replies):
        for r in replies:
            if r.error is not None:
                raise r.error
        return [a for r in replies for a in r.arrays]

    def _desc(self, key, step=0):
        info = self._keys[key]
        return ArrayDesc(key, 0, info.dtype, info.shape, step)

    def _init(self, keys, values):
        for k, v in zip(keys, values):
            self._run(self.shard.init(0, self._desc(k), v, token=k))

    def _push(self, keys, values, priority):
        for k, v in zip(keys, values):
            info = self._keys[k]
            info.pushes += 1
            self._run(self.shard.push(0, self._desc(k, info.pushes), arrays.to_host(v), token=k))
            info.acked = info.pushes

    def _pull(self, keys, outs, priority):
        for k, out in zip(keys, outs):
            (_, value), = self._run(self.shard.pull(0, self._desc(k, self._keys[k].pushes), token=k))
            for o in out:
                arrays.copy_into(o, value)

    def _pushpull(self, keys, values, outs, priority):
        self._push(keys, values, priority)
        self._pull(keys, outs, priority)

    def _set_optimizer(self, spec):
        from .. import optim
        self.shard.set_optimizer(optim.from_spec(spec))   # the same round trip as the wire

    def _barrier(self, timeout):
        pass

    def _join(self, timeout):
        pass     # the only worker: nobody to wait for

    def server_stats(self, timeout=None):
        """The in-process shard's counters, shaped like the dist kinds' (one dict per server)."""
        return [self.shard.stats()]

    def _close(self):
        pass
