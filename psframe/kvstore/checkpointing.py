"""``save_checkpoint`` / ``load_checkpoint`` of every kind: who writes what, and in which order.

Save (every worker calls it): all pushes are merged first (flush + barrier); rank 0 removes an
old manifest at the URL; every server writes its own shard while every worker writes its own
``worker_state``; then rank 0 writes ``manifest.json`` (the key layout, the servers' indexes,
the workers' states), last, so a checkpoint exists only once all of it is there. Load: every
worker checks the manifest against its keys; rank 0 tells each server which range of which key
each of its entries holds, and the servers read just those (re-sharding by key); every worker
then continues its keys' step counts from the checkpoint and gets its ``worker_state`` back.
Rank 0's outcome travels on the barrier, so every worker returns or raises alike.
"""
import numpy as np

from ..checkpoint import manifest, worker_state
from ..checkpoint.files import Store
from ..checkpoint.shards import write_shard
from ..errors import CheckpointError, PSError, from_wire, to_wire
from ..optim import to_spec
from ..protocol import Command
from ..server import snapshot


def key_layout(keys):
    """Per user key, the pieces of it the job stores: ``(server, wire key, part, member, start,
    stop)`` (see ``manifest.build``); a kind without servers stores each key whole on "server 0"."""
    out = []
    for k, info in keys.items():
        if info.group is not None:
            pieces = [(info.group.server, info.group.key, 0, info.member, 0, info.size)]
        elif info.parts:
            pieces = [(p.server, k, p.part, 0, p.start, p.stop) for p in info.parts]
        else:
            pieces = [(0, k, 0, 0, 0, info.size)]
        out.append({"key": k, "dtype": info.dtype, "shape": list(info.shape), "pieces": pieces})
    return out


def check_keys(ckpt, keys):
    """Every key of this job is in ``ckpt`` with the same shape and dtype.

    Raises:
        CheckpointError: naming the first key that is missing or differs.
    """
    for k, info in keys.items():
        rec = ckpt.keys.get(k)
        if rec is None:
            raise CheckpointError(f"key {k!r} is not in checkpoint {ckpt.url} (it holds "
                                  f"{len(ckpt.keys)} keys); initialise the same keys as the job "
                                  f"that saved it", url=ckpt.url)
        if tuple(rec["shape"]) != tuple(info.shape) or np.dtype(rec["dtype"]) != np.dtype(info.dtype):
            raise CheckpointError(f"key {k!r} is {info.dtype}{list(info.shape)} here but "
                                  f"{np.dtype(rec['dtype']).name}{rec['shape']} in checkpoint "
                                  f"{ckpt.url}; initialise it as the saving job did", url=ckpt.url)


def continue_steps(keys, ckpt):
    """The next push of every key is the step after the checkpoint's."""
    for k, info in keys.items():
        step = ckpt.step_of(k)
        info.pushes = info.acked = step
        if info.part_acked is not None:
            info.part_acked = [step] * len(info.part_acked)


def new_store(url, storage_options):
    """The checkpoint directory, created, with any earlier manifest at it removed first (a save
    that dies half way must not leave an old manifest naming files it has overwritten)."""
    store = Store(url, storage_options)
    store.makedirs()
    if store.exists(manifest.MANIFEST):
        try:
            store.fs.rm(store.path(manifest.MANIFEST))
        except Exception as exc:
            raise CheckpointError(f"cannot replace the checkpoint at {store.url}: removing its "
                                  f"manifest failed ({exc})", url=store.url) from None
    return store


# -- local ------------------------------------------------------------------------------------
def save_local(kv, url, state, storage_options):
    store = new_store(url, storage_options)
    index = write_shard(store, 0, snapshot.export(kv.shard))
    windex = worker_state.write(store, 0, state)
    spec = to_spec(kv.shard.optimizer) if kv.shard.optimizer is not None else None
    doc = manifest.build([index], key_layout(kv._keys), kind=kv.type, num_workers=1,
                         optimizer=spec, workers=[windex])
    store.write_json(manifest.MANIFEST, doc)


def load_local(kv, url, storage_options):
    ckpt = manifest.Checkpoint(url, storage_options)
    check_keys(ckpt, kv._keys)
    snapshot.restore(kv.shard, ckpt, {}, optimizer_name(kv.shard.optimizer))
    continue_steps(kv._keys, ckpt)
    return worker_state.read(ckpt.store, ckpt.worker_index(0))


def optimizer_name(opt):
    return None if opt is None else to_spec(opt)["name"]


# -- dist -------------------------------------------------------------------------------------
def _note(exc, **extra):
    """A barrier note carrying ``exc`` (or None), so every worker raises what one worker hit."""
    return dict(extra, error=list(to_wire(exc)) if exc is not None else None)


def _raise_any(notes):
    """Raise the error of the lowest rank whose note carries one."""
    for rank in sorted(notes, key=int):
        err = (notes.get(rank) or {}).get("error")
        if err:
            raise from_wire(*err)


def save_dist(client, url, state, storage_options):
    """``client``: the worker's connection (``flush``, ``barrier(note)``, ``ask_servers``,
    ``keys``, ``rank``, ``num_workers``, ``kind``)."""
    client.flush()
    error, store = None, None
    if client.rank == 0:
        try:
            store = new_store(url, storage_options)
        except PSError as exc:
            error = exc
    _raise_any(client.barrier(_note(error)))       # every push merged, dir ready
    error, windex, indexes = None, None, None
    try:
        store = store or Store(url, storage_options)
        if client.rank == 0:
            replies = client.ask_servers("save_checkpoint", {"url": url, "storage_options": storage_options or {}},
                                         "saving a checkpoint")
        windex = worker_state.write(store, client.rank, state)
        if client.rank == 0:
            indexes = [r["index"] for r in replies]
            spec = replies[0].get("optimizer")
    except PSError as exc:
        error = exc
    notes = client.barrier(_note(error, worker=windex))
    _raise_any(notes)
    error = None
    if client.rank == 0:
        try:
            workers = [notes[str(r)]["worker"] for r in range(client.num_workers)]
            doc = manifest.build(indexes, key_layout(client.keys), kind=client.kind,
                                 num_workers=client.num_workers, optimizer=spec, workers=workers)
            store.write_json(manifest.MANIFEST, doc)
        except PSError as exc:
            error = exc
    _raise_any(client.barrier(_note(error)))


def load_dist(client, url, storage_options):
    """Load ``url`` into the servers and this worker's step counts; returns its worker_state."""
    client.flush()
    error, ckpt = None, None
    try:
        ckpt = manifest.Checkpoint(url, storage_options)
        check_keys(ckpt, client.keys)
    except PSError as exc:
        error = exc
    _raise_any(client.barrier(_note(error)))
    error = None
    if client.rank == 0:
        try:
            ranges = {}
            for k, info in client.keys.items():
                if info.group is None and len(info.parts) > 1:
                    for p in info.parts:
                        ranges.setdefault(p.server, []).append([k, p.part, p.start, p.stop])
            client.ask_servers("load_checkpoint", {"url": url, "storage_options": storage_options or {}},
                               "loading a checkpoint", per_server=lambda s: {"ranges": ranges.get(s, [])})
        except PSError as exc:
            error = exc
    _raise_any(client.barrier(_note(error)))
    continue_steps(client.keys, ckpt)
    client.steps_loaded()
    return worker_state.read(ckpt.store, ckpt.worker_index(client.rank))


class DistClient:
    """What ``save_dist``/``load_dist`` need of a ``DistKVStore``, in one place."""

    def __init__(self, kv):
        self.kv = kv
        self.rank, self.num_workers, self.kind = kv.rank, kv.num_workers, kv.type
        self.keys = kv._keys

    def flush(self):
        self.kv._flush()

    def barrier(self, note):
        return self.kv._barrier(None, note=note)

    def steps_loaded(self):
        """The step counts were set from a checkpoint: the host tier takes them over (its
        aggregator sends with local rank 0's counts, so every worker of the host waits until
        all of them have them)."""
        if self.kv._tier is not None:
            self.kv._tier.steps_loaded()
            self.barrier(None)

    def ask_servers(self, command, body, what, per_server=None):
        """Send ``command`` to every server at once; their reply bodies, by server."""
        cmd = Command(command)
        reqs = [self.kv._send((s, False), cmd, body=dict(body, **(per_server(s) if per_server else {})))
                for s in range(len(self.kv._servers))]
        self.kv._customer.wait(reqs, what)
        return [r.body or {} for r in reqs]
