"""Outgoing messages of a worker: what each call sends on which lane, and where replies land.

The builders cut a call's keys into ``routes.Batches`` (one ``Batch`` per message): a key
travels as its parts (cut over the servers when big), a fusion group named whole and in step as
one array. They only build; ``DistKVStore`` sends the batches and waits on the requests.
"""
import numpy as np

from .. import arrays
from ..protocol import ArrayDesc, Command
from . import fusion
from .requests import Ack
from .routes import Batches, group_lane, key_lane, lane, place_group, place_key


def part_shape(info, part):
    return info.shape if len(info.parts) == 1 else (part.size,)


def by_group(known, keys, items):
    """``(plain, fused)``: ``[(key, item)]`` to send key by key, and ``[(group, [item per
    member])]`` for groups this call names whole and in step (they go as one array)."""
    plain, calls = [], {}
    for k, item in zip(keys, items):
        info = known[k]
        g = info.group
        if g is None:
            plain.append((k, item))
            continue
        members = calls.get(g)
        if members is None:
            members = calls[g] = [None] * len(g.names)
        members[info.member] = (k, item)
    fused = []
    for g, members in calls.items():
        if all(m is not None for m in members) and g.in_step():
            fused.append((g, [item for _, item in members]))
        else:
            plain.extend(m for m in members if m is not None)
    return plain, fused


def placement_request(units, known):
    """What the scheduler places: ``[key, elements, bytes]`` per unit, plus a group's names."""
    metas = []
    for u in units:
        if type(u) is fusion.Group:
            metas.append([u.key, u.size, u.size * np.dtype(u.dtype).itemsize, u.names])
        else:
            info = known[u]
            metas.append([u, info.size, info.size * np.dtype(info.dtype).itemsize])
    return metas


def init_batches(units, placed, values, known, rank, num_servers):
    """Record where each unit lives (``placed``: its server) and build the init messages: rank
    0 sends the values, the others only describe them (``meta``). ``values``: key -> array."""
    batches = Batches()
    for unit, server in zip(units, placed):
        if type(unit) is fusion.Group:
            members = place_group(unit, server, num_servers)
            pieces = [(server, ArrayDesc(unit.key, 0, unit.dtype, (unit.size,)), members,
                       lambda g=unit: np.concatenate([values[k].reshape(-1) for k in g.names]))]
        else:
            info = known[unit]
            place_key(info, server, num_servers)
            flat = values[unit].reshape(-1)
            pieces = [(p.server, ArrayDesc(unit, p.part, info.dtype, part_shape(info, p)), None,
                       lambda flat=flat, p=p: flat[p.start:p.stop]) for p in info.parts]
        for where, desc, members, value in pieces:
            batch = batches.add(lane(where, desc.nbytes), desc.nbytes if rank == 0 else 64)
            batch.groups.append(members)
            if rank == 0:
                batch.descs.append(desc)
                batch.bufs.append(value())
            else:
                batch.meta.append(desc.to_wire())
    return batches


def pull_batches(known, plain, fused):
    """``(batches, finish)``: the pull messages (``meta`` and ``targets``), and what to call
    once every reply is in (copies into outputs the bytes could not land in directly)."""
    batches, finish = Batches(), []
    for k, out in plain:
        info = known[k]
        flat, copy_back = landing(info, out)
        finish.append(copy_back)
        for p in info.parts:
            desc = ArrayDesc(k, p.part, info.dtype, part_shape(info, p), info.pushes)
            target = flat[p.start:p.stop]
            batch = batches.add(key_lane(info, p), target.nbytes)
            batch.meta.append(desc.to_wire())
            batch.targets[(k, p.part)] = target
    for g, group_outs in fused:
        flat = g.landing()
        batch = batches.add(group_lane(g), flat.nbytes)
        batch.meta.append(ArrayDesc(g.key, 0, g.dtype, (g.size,), g.infos[0].pushes).to_wire())
        batch.targets[(g.key, 0)] = flat
        finish.append(lambda g=g, outs=group_outs: g.unpack(outs))
    return batches, finish


def pull_targets(known, plain, fused):
    """``(targets, finish)`` of a pushpull: where each reply array lands, and the copies after."""
    finish, targets = [], {}
    for k, out in plain:
        info = known[k]
        flat, copy_back = landing(info, out)
        finish.append(copy_back)
        for p in info.parts:
            targets[(k, p.part)] = flat[p.start:p.stop]
    for g, outs in fused:
        targets[(g.key, 0)] = g.landing()
        finish.append(lambda g=g, outs=outs: g.unpack(outs))
    return targets, finish


def push_batches(cmd, known, plain, fused, targets, backpressure, compressor=None):
    """``(batches, wait_for_send)``: the push (or pushpull, with reply ``targets``) messages.
    ``backpressure(info)`` is called before each key's push is counted; ``wait_for_send``:
    the messages carry the caller's own arrays, zero-copy, so a push waits until zmq sent them.
    ``compressor``: the worker's ``compression.GradientCompressor``, if any; float arrays then
    travel compressed (a key's parts with their slices of its residual, a group whole, a group
    member pushed alone with its slice of the group's residual)."""
    batches, owned = Batches(), True
    for k, v in plain:
        info = known[k]
        backpressure(info)
        spec = compressor.spec if compressor is not None and compressor.applies_to(info.dtype) else None
        if spec is not None and arrays.backend(v) == "cupy":
            host, copied = v, True          # compressed on the device; only the codes move
        else:
            host, copied = host_array(v)
        owned = owned and (copied or spec is not None)   # our copy: no need to wait for the wire
        info.pushes += 1
        flat = host.reshape(-1)
        g = info.group
        entry, entry_size, offset = (g.key, g.size, g.bounds[info.member]) if g else (k, info.size, 0)
        for i, p in enumerate(info.parts):
            buf = flat[p.start:p.stop]
            # messages are cut by the uncompressed bytes: a pushpull's reply carries them, and
            # a reply of many chunks would arrive only whole (no pipelining)
            batch = batches.add(key_lane(info, p), buf.nbytes)
            if spec is not None:
                buf = compressor.encode(entry, entry_size, buf, offset + p.start)
            batch.descs.append(ArrayDesc(k, p.part, info.dtype, part_shape(info, p), info.pushes, spec))
            batch.bufs.append(buf)
            batch.acks.append(Ack(k, info, i))
            if (k, p.part) in targets:
                batch.targets[(k, p.part)] = targets[(k, p.part)]
    for g, vals in fused:
        flats = []
        for info, v in zip(g.infos, vals):
            backpressure(info)
            flats.append(host_array(v)[0].reshape(-1))
            info.pushes += 1
        slot = g.pack(flats)                # our copy, reused once zmq has sent it
        batch = batches.add(group_lane(g), slot.array.nbytes)
        spec = compressor.spec if compressor is not None and compressor.applies_to(g.dtype) else None
        batch.descs.append(ArrayDesc(g.key, 0, g.dtype, (g.size,), g.infos[0].pushes, spec))
        if spec is None:
            batch.bufs.append(slot.array)
            batch.send_buffers.append(slot)
        else:     # the packed copy is free again at once: only its codes are sent
            batch.bufs.append(compressor.encode(g.key, g.size, slot.array))
        batch.acks.append(Ack(g.key, None, 0, g))
        if (g.key, 0) in targets:
            batch.targets[(g.key, 0)] = targets[(g.key, 0)]
    # A pushpull's reply proves its bytes left (the server answers only once it has them
    # all), so only a push must track zero-copy sends of the caller's arrays.
    return batches, not owned and cmd is Command.PUSH


def host_array(value):
    """``(host array, copied)``: ``value`` itself when it is a contiguous numpy array."""
    if type(value) is np.ndarray and value.flags.c_contiguous:
        return value, False
    return arrays.to_host_copied(value)


def landing(info, outs):
    """Where pulled bytes land: the first output itself when it is a contiguous host
    array, else a host buffer copied to every output afterwards."""
    first = outs[0]
    if type(first) is not np.ndarray or not first.flags.c_contiguous or not first.flags.writeable:
        first = arrays.host_view(first)
    if first is None:
        first = np.empty(info.shape, dtype=info.dtype)
        rest = outs
    else:
        rest = outs[1:]

    def copy_back():
        for o in rest:
            arrays.copy_into(o, first)
    return first.reshape(-1), copy_back
