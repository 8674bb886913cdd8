"""Running a server-side optimizer over an entry: member by member, or a whole fusion group's
flat value in one call when the optimizer is elementwise (and then member states are views of
the group's state, so both ways of updating share one state)."""
import numpy as np

from ..errors import OptimizerError
from ..optim.base import STEP_KEY


def update(opt, st, grad, members, counters, offset=0):
    """``opt.update`` of each of ``members`` of ``st`` (its value must be writable), whose
    gradient starts at ``grad[bounds[m] - offset]``; ``counters["updates"]`` counts the keys
    updated.

    Raises:
        OptimizerError: an update raised (the cause is chained).
    """
    if opt.elementwise and st.grouped and len(members) == len(st.names) and _update_group(opt, st, grad):
        counters["updates"] += len(st.names)
        return
    for m in members:
        weight = st.member_view(st.value, m)
        if st.opt_state[m] is None:
            st.opt_state[m] = opt.create_state(st.names[m], weight)
        g = grad[st.bounds[m] - offset:st.bounds[m + 1] - offset].reshape(st.shapes[m])
        try:
            opt.update(st.names[m], weight, g, st.opt_state[m])
        except Exception as exc:
            raise OptimizerError.wrapping(
                exc, f"the update of key {st.names[m]!r} (step {int(st.completed[m]) + 1}) raised",
                "the key cannot be used any more")
        counters["updates"] += 1


def _update_group(opt, st, grad):
    """One ``opt.update`` of a whole group's flat value, for an elementwise optimizer: the
    same arithmetic on every element as one call per member, without a Python round per key.
    Only when every member is at the same update count (members pushed on their own may not
    be); returns False to update member by member."""
    if st.group_state is None:
        _create_group_state(opt, st)
    steps = st.group_steps
    t = steps[0]
    if len(steps) > 1 and (steps != t).any():
        return False
    state = st.group_state
    state[STEP_KEY][...] = t
    try:
        opt.update(st.label, st.value, grad[:st.bounds[-1]], state)
    except Exception as exc:
        raise OptimizerError.wrapping(exc, f"the update of keys {st.label} (step {int(t) + 1}) raised",
                                      "the keys cannot be used any more")
    steps += 1
    return True


def _create_group_state(opt, st):
    """The optimizer's state of a group's flat value; each member's state becomes views of it
    (its slice of every slot, its entry of ``group_steps``), taking over what a member updated
    on its own had learnt, so both ways of updating share one state."""
    flat = st.value
    state = opt.create_state(st.label, flat)
    for name, a in state.items():
        if name != STEP_KEY and a.shape != flat.shape:
            raise OptimizerError(
                f"{type(opt).__name__} sets elementwise = True, but its state {name!r} has shape "
                f"{a.shape}, not the weight's {flat.shape}; an elementwise optimizer keeps "
                f"weight-shaped state only: set elementwise = False on the class")
    steps = np.zeros(len(st.names), np.int64)
    views = []
    for m, old in enumerate(st.opt_state):
        view = {name: steps[m:m + 1].reshape(()) if name == STEP_KEY else st.member_view(a, m)
                for name, a in state.items()}
        for name, a in (old or {}).items():
            view[name][...] = a
        views.append(view)
    st.opt_state, st.group_state, st.group_steps = views, state, steps
