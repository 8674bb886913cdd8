"""The ``local`` kind: the same API in one process, driving a server shard directly (no
sockets, no threads), so a serial training script runs unchanged.

Gradient compression applies here too: each push goes through the same quantization and
residual as it would on a worker of a dist job (compressed, then decoded), so a serial run sees
the numerics of a one-worker job.
"""
from .. import arrays, compression
from ..protocol import ArrayDesc
from ..server.shard import ShardState
from . import checkpointing
from .base import KVStore


class LocalKVStore(KVStore):
    type = "local"

    def __init__(self, sync=True):
        super().__init__()
        self.shard = ShardState(num_workers=1, sync=sync)
        self._bytes_in_wire = 0     # what the pushes would have put on the wire (compressed)

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
            host = arrays.to_host(v)
            if self._compressor is not None and self._compressor.applies_to(info.dtype):
                host = compression.roundtrip(self._compressor, k, info.size, host.reshape(-1))
                host = host.reshape(info.shape)
                self._bytes_in_wire += self._compressor.spec.wire_nbytes(info.size)
            else:
                self._bytes_in_wire += host.nbytes
            self._run(self.shard.push(0, self._desc(k, info.pushes), host, token=k))
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

    def _save_checkpoint(self, url, worker_state, storage_options):
        checkpointing.save_local(self, url, worker_state, storage_options)

    def _load_checkpoint(self, url, storage_options):
        return checkpointing.load_local(self, url, storage_options)

    def server_stats(self, timeout=None):
        """The in-process shard's counters, shaped like the dist kinds' (one dict per server)."""
        return [dict(self.shard.stats(), bytes_in_wire=self._bytes_in_wire)]

    def _close(self):
        pass
