"""A shard's state as plain records and back: what a checkpoint writes and loads (and what a
standby replica would copy). Pure: no sockets, no storage.

``export`` turns every stored entry into an ``EntrySnapshot`` (value, every optimizer slot
including ``t``, completed steps, the members' layout). ``restore`` puts values, state and
steps read from a checkpoint into the entries a job has already initialised (its own layout,
which may cut keys differently from the saving job's).
"""
import numpy as np

from ..checkpoint.shards import EntrySnapshot, size_of
from ..errors import CheckpointError, ConfigError
from ..optim.base import STEP_KEY


def export(shard):
    """``EntrySnapshot`` of every entry of ``shard`` (values not copied: write them before the
    shard changes again).

    Raises:
        ConfigError: an entry is not initialised, failed, or has pushes not yet merged.
    """
    out = []
    for (key, part), st in sorted(shard.keys.items(), key=lambda kv: repr(kv[0])):
        _check_quiet(st, "save")
        members = st.layout() if st.grouped else [(st.key, st.shape)]
        slots = {}
        if any(s is not None for s in st.opt_state):
            names = sorted({n for s in st.opt_state if s is not None for n in s})
            for name in names:
                slots[name] = [None if s is None else np.asarray(s[name]) for s in st.opt_state]
        out.append(EntrySnapshot(key=key, part=part, dtype=st.dtype, members=members,
                                 grouped=st.grouped, sync=st.sync,
                                 completed=[int(c) for c in st.completed], value=st.value,
                                 slots=slots))
    return out


def _check_quiet(st, what):
    name = st.names[0] if st.grouped else st.key
    if st.value is None:
        raise ConfigError(f"cannot {what} a checkpoint: key {name!r} is not initialised by every "
                          f"worker yet")
    if st.failed is not None:
        raise ConfigError(f"cannot {what} a checkpoint: key {name!r} failed ({st.failed})")
    if st.merges or st.parked_pulls:
        raise ConfigError(f"cannot {what} a checkpoint: key {name!r} has pushes or pulls in "
                          f"flight; every worker must call it (it waits for their pushes)")


def _plan(shard, ckpt, ranges, optimizer_name):
    """Check the optimizer, and list per entry ``(member, key, start, stop)`` to read."""
    saved = (ckpt.optimizer or {}).get("name")
    if saved is not None and optimizer_name is None:
        raise CheckpointError(f"checkpoint {ckpt.url} holds {saved!r} optimizer state but this job "
                              f"has no optimizer; call kv.set_optimizer(...) as the saving job did, "
                              f"before load_checkpoint", url=ckpt.url)
    if saved is not None and saved != optimizer_name:
        raise CheckpointError(f"checkpoint {ckpt.url} holds {saved!r} optimizer state but this job "
                              f"runs {optimizer_name!r}; set the same optimizer before "
                              f"load_checkpoint", url=ckpt.url)
    plan = []
    for (key, part), st in shard.keys.items():
        _check_quiet(st, "load")
        if st.grouped:
            members = [(m, name, 0, st.bounds[m + 1] - st.bounds[m]) for m, name in enumerate(st.names)]
        else:
            start, stop = ranges.get((key, part), (0, st.bounds[-1]))
            members = [(0, key, start, stop)]
        for _, name, _, stop in members:
            _check_key(ckpt, name, st.dtype, stop)
        plan.append((st, members))
    return plan


def prefetch(shard, ckpt, ranges, optimizer_name=None):
    """Check ``ckpt`` against ``shard`` and read every file ``restore`` will need (this may run
    on another thread than ``restore``, as long as no message changes the shard meanwhile)."""
    plan = _plan(shard, ckpt, ranges, optimizer_name)
    ckpt.prefetch([(name, a, b) for _, members in plan for _, name, a, b in members],
                  optimizer_name is not None)


def restore(shard, ckpt, ranges, optimizer_name=None):
    """Load ``ckpt`` (a ``checkpoint.Checkpoint``) into every entry of ``shard``.

    Args:
        ranges: ``{(key, part): (start, stop)}``: the flat range of the key a key-part holds
            (entries not listed hold their whole key: unsliced keys and fusion groups).
        optimizer_name: registered name of the shard's optimizer (None: it has none).

    Raises:
        CheckpointError: the checkpoint's optimizer or keys differ, or a file fails its checks.
        ConfigError: an entry is not initialised or has pushes in flight.
    """
    prefetch(shard, ckpt, ranges, optimizer_name)
    want_state = optimizer_name is not None
    for st, members in _plan(shard, ckpt, ranges, optimizer_name):
        whole = ckpt.saved_entry_value(members, st.bounds)
        if whole is not None and whole.dtype == np.dtype(st.dtype):
            st.value = whole       # laid out as saved: the array read is the value, no copy
        for m, name, a, b in members:
            value, state = ckpt.read_range(name, a, b, with_state=want_state)
            _restore_member(shard, st, m, None if st.value is whole else value, state,
                            ckpt.step_of(name))
    ckpt.release()


def _check_key(ckpt, name, dtype, stop):
    rec = ckpt.keys.get(tuple(name) if isinstance(name, list) else name)
    if rec is None:
        raise CheckpointError(f"checkpoint {ckpt.url} has no key {name!r}; initialise the same "
                              f"keys as the saving job", url=ckpt.url)
    size = size_of(rec["shape"])
    if np.dtype(rec["dtype"]) != np.dtype(dtype) or stop > size:
        raise CheckpointError(f"key {name!r} is {rec['dtype']}{rec['shape']} in checkpoint "
                              f"{ckpt.url} but {dtype} here; initialise it as the saving job did",
                              url=ckpt.url)


def _restore_member(shard, st, m, value, state, step):
    """Member ``m`` of entry ``st`` takes ``value`` (None: already in place), ``state`` and
    ``step``."""
    lo, hi = st.bounds[m], st.bounds[m + 1]
    if value is not None:
        if shard.guard.shared(st.value):     # zmq may still send the old value: write to a copy
            st.value = st.value.copy()
        else:
            shard.guard.wait(st.value)
        st.value[lo:hi] = value
    st.completed[m] = step
    st.pushes[:, m] = step
    st.group_state = st.group_steps = None   # rebuilt from the members' state on the next update
    shape, size = st.shapes[m], hi - lo
    if state is None:
        st.opt_state[m] = None
        return
    restored = {}
    for name, a in state.items():
        a = np.array(a, copy=True)
        if name == STEP_KEY:
            a = a.reshape(()).astype(np.int64)
        elif a.ndim == 1 and a.size == size:
            a = a.reshape(shape)
        restored[name] = a
    if STEP_KEY not in restored:
        raise CheckpointError(f"key {st.names[m]!r}: the saved optimizer state has no update "
                              f"count {STEP_KEY!r}")
    st.opt_state[m] = restored
