"""The manifest of a checkpoint, written last, and the reader that reassembles any key range.

``manifest.json`` holds the shards' index records (see ``shards``), the worker states (see
``worker_state``), and per user key its dtype, shape, completed steps and *pieces*: which
member of which stored entry holds which range of the key's flat elements. A loading job cuts
its keys differently (another server count, other fusion groups) and asks for its own ranges;
``Checkpoint.read_range`` assembles them from the pieces, so re-sharding is by key.
"""
import time

import numpy as np

from ..errors import CheckpointError
from .files import Store, parallel_map
from .shards import member_bounds, size_of

FORMAT = "psframe-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"


def build(shards, key_layout, *, kind, num_workers, optimizer, workers):
    """The manifest document.

    Args:
        shards: every server's ``write_shard`` result, any order.
        key_layout: per user key ``{"key", "dtype", "shape", "pieces": [(server, wire key,
            part, member, start, stop)]}``: where the saving job keeps each range of it.
        kind: the KVStore kind that saved it.
        num_workers: workers of the saving job.
        optimizer: the optimizer spec the servers ran (None: none).
        workers: per rank, its ``worker_state`` index (or None).

    Raises:
        CheckpointError: a piece names an entry no server wrote, or members disagree on steps.
    """
    shards = sorted(shards, key=lambda s: s["server"])
    where = {}
    for s, shard in enumerate(shards):
        for e, rec in enumerate(shard["entries"]):
            where[(shard["server"], _hashable(rec["key"]), rec["part"])] = (s, e, rec)
    keys, top = [], 0
    for item in key_layout:
        pieces, steps = [], set()
        for server, wire_key, part, member, start, stop in item["pieces"]:
            found = where.get((server, _hashable(wire_key), part))
            if found is None:
                raise CheckpointError(f"key {item['key']!r}: server {server} wrote no entry "
                                      f"{wire_key!r} part {part}; the servers and this worker "
                                      f"disagree on the key layout")
            s, e, rec = found
            pieces.append([s, e, member, start, stop])
            steps.add(rec["completed"][member])
        if len(steps) > 1:
            raise CheckpointError(f"key {item['key']!r}: its parts are at different steps "
                                  f"{sorted(steps)}; save only when every push is merged")
        step = steps.pop() if steps else 0
        top = max(top, step)
        keys.append({"key": item["key"], "dtype": item["dtype"], "shape": list(item["shape"]),
                     "step": step, "pieces": pieces})
    return {"format": FORMAT, "version": VERSION, "created": time.time(), "kind": kind,
            "num_workers": num_workers, "num_servers": len(shards), "optimizer": optimizer,
            "step": top, "shards": shards, "keys": keys, "workers": list(workers)}


def _index_entry(entry):
    """Add the members' flat offsets to an entry record (value: ``bounds``; each slot:
    ``offsets``, where members without state take no room), computed once per checkpoint."""
    entry["bounds"] = member_bounds(entry["members"])
    for slot in entry["slots"].values():
        offsets, at = [], 0
        for shape in slot["shapes"]:
            offsets.append(at if shape is not None else None)
            at += size_of(shape) if shape is not None else 0
        slot["offsets"] = offsets


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


class Checkpoint:
    """A complete checkpoint, opened for reading (the manifest is read and checked here).

    Raises:
        CheckpointError: no manifest (an incomplete or missing checkpoint), or a malformed one.
    """

    def __init__(self, url, storage_options=None):
        self.store = Store(url, storage_options)
        self.url = self.store.url
        murl = self.store.name_url(MANIFEST)
        if not self.store.exists(MANIFEST):
            raise CheckpointError(f"{self.url} is not a complete checkpoint: it has no {MANIFEST} "
                                  f"(written last, so the save did not finish); use "
                                  f"psframe.checkpoint.latest(directory) to find a complete one",
                                  url=murl)
        self.manifest = m = self.store.read_json(MANIFEST)
        if m.get("format") != FORMAT or m.get("version") != VERSION:
            raise CheckpointError(f"{murl} is not a {FORMAT} version {VERSION} manifest "
                                  f"(format {m.get('format')!r}, version {m.get('version')!r})", url=murl)
        try:
            self.entries = [shard["entries"] for shard in m["shards"]]
            for entries in self.entries:
                for entry in entries:
                    _index_entry(entry)
            self.keys = {}
            for rec in m["keys"]:
                self._check_pieces(rec)
                self.keys[_hashable(rec["key"])] = rec
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise CheckpointError(f"{murl} is malformed ({type(exc).__name__}: {exc}); the file "
                                  f"was damaged or not written by psframe", url=murl) from None
        self._cache = {}

    def _check_pieces(self, rec):
        size = size_of(rec["shape"])
        covered = 0
        for s, e, m, start, stop in sorted(rec["pieces"], key=lambda p: p[3]):
            b = self.entries[s][e]["bounds"]
            if start != covered or not start <= stop <= size or b[m + 1] - b[m] != stop - start:
                raise ValueError(f"the pieces of key {rec['key']!r} do not tile its {size} elements")
            covered = stop
        if covered != size:
            raise ValueError(f"the pieces of key {rec['key']!r} cover {covered} of {size} elements")

    @property
    def optimizer(self):
        return self.manifest.get("optimizer")

    def step_of(self, key):
        return self.keys[key]["step"]

    def prefetch(self, ranges, with_state=True):
        """Read (in parallel) every file that ``read_range`` of ``ranges`` [(key, start, stop)]
        will need, so the reads overlap instead of following one another."""
        records = {}
        for key, start, stop in ranges:
            for s, e, m, a, b in self._overlapping(key, start, stop):
                entry = self.entries[s][e]
                records[entry["value"]["path"]] = entry["value"]
                if with_state:
                    for slot in entry["slots"].values():
                        records[slot["file"]["path"]] = slot["file"]
        todo = [r for p, r in records.items() if p not in self._cache]
        if not todo:
            return
        for rec, array in zip(todo, parallel_map(self.store.read_array, todo, self.store.threads)):
            self._cache[rec["path"]] = array

    def _file(self, rec):
        array = self._cache.get(rec["path"])
        if array is None:
            array = self._cache[rec["path"]] = self.store.read_array(rec)
        return array

    def _overlapping(self, key, start, stop):
        rec = self.keys.get(_hashable(key))
        if rec is None:
            raise CheckpointError(f"checkpoint {self.url} has no key {key!r}", url=self.url)
        return [p for p in rec["pieces"] if p[3] < stop and p[4] > start or p[3] == p[4] == start]

    def read_range(self, key, start, stop, with_state=True):
        """Flat elements ``[start, stop)`` of ``key``, and its optimizer state over them.

        Returns:
            (value, state): ``value`` a flat array; ``state`` None (no optimizer state saved)
            or ``{slot: array}``, where weight-shaped slots are flat over the range and scalar
            slots (such as ``t``) 0-d.

        Raises:
            CheckpointError: a file fails its checks, or a slot that is neither weight-shaped
                nor scalar would have to be cut differently than it was saved.
        """
        pieces = self._overlapping(key, start, stop)
        values, slot_parts, stated = [], {}, set()
        for s, e, m, a, b in pieces:
            entry = self.entries[s][e]
            lo, hi = max(a, start), min(b, stop)
            base = entry["bounds"][m]
            flat = self._file(entry["value"])
            values.append(flat[base + lo - a:base + hi - a])
            if not with_state:
                continue
            stated.add(bool(entry["slots"]) and entry["slots"][next(iter(entry["slots"]))]["shapes"][m] is not None)
            for name, slot in entry["slots"].items():
                shapes = slot["shapes"]
                if shapes[m] is None:
                    continue
                offset = slot["offsets"][m]
                array = self._file(slot["file"])[offset:offset + size_of(shapes[m])]
                member_shape = entry["members"][m][1]
                slot_parts.setdefault(name, []).append(
                    (array, list(shapes[m]), list(member_shape), lo - a, hi - a, (a, b)))
        value = values[0] if len(values) == 1 else np.concatenate(values)
        if not with_state or not stated or stated == {False}:
            return value, None
        if len(stated) > 1:
            raise CheckpointError(f"key {key!r}: some of its parts have optimizer state and some "
                                  f"not; checkpoint {self.url} is inconsistent", url=self.url)
        return value, {name: self._join_slot(key, name, parts, start, stop)
                       for name, parts in slot_parts.items()}

    def _join_slot(self, key, name, parts, start, stop):
        if all(shape == member for _, shape, member, *_ in parts):      # weight-shaped
            chunks = [array[lo:hi] for array, _, _, lo, hi, _ in parts]
            return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        if all(shape == [] for _, shape, *_ in parts):                    # scalar, e.g. t
            first = parts[0][0]
            if any(not np.array_equal(p[0], first) for p in parts):
                raise CheckpointError(f"key {key!r}: optimizer slot {name!r} differs between its "
                                      f"parts; checkpoint {self.url} is inconsistent", url=self.url)
            return first.reshape(())
        if len(parts) == 1 and parts[0][5] == (start, stop):             # the range as saved
            array, shape = parts[0][0], parts[0][1]
            return array.reshape(shape)
        raise CheckpointError(f"key {key!r}: optimizer slot {name!r} has shape {parts[0][1]}, "
                              f"neither the weight's nor a scalar, so it cannot be cut into other "
                              f"server slices; load into as many servers as saved it "
                              f"({self.manifest['num_servers']})", url=self.url)

    def saved_entry_value(self, members, bounds):
        """The whole flat value file of one saved entry when it is laid out exactly as a loading
        entry (``members``: ``[(member, key, start, stop)]`` in order; ``bounds``: its member
        offsets), so the loader can take the array as it is instead of copying it; else None."""
        where = None
        for m, key, start, stop in members:
            pieces = self._overlapping(key, start, stop)
            if len(pieces) != 1:
                return None
            s, e, pm, a, b = pieces[0]
            if (pm, a, b) != (m, start, stop) or where not in (None, (s, e)):
                return None
            where = (s, e)
        entry = self.entries[where[0]][where[1]]
        return self._file(entry["value"]) if entry["bounds"] == list(bounds) else None

    def worker_index(self, rank):
        workers = self.manifest.get("workers") or []
        return workers[rank] if rank < len(workers) else None

    def release(self):
        """Drop the arrays read so far."""
        self._cache.clear()
