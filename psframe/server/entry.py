"""What a shard stores per entry: a key-part or a fusion group laid out in one flat value, the
merges of its open steps and the pulls parked on them, and the records replies are made of."""
import dataclasses

import numpy as np


def low(a, lo, hi):
    """``a[lo:hi].min()``; one element is read directly (plain keys are the hot path, and a
    numpy reduction costs a microsecond or two per call)."""
    return a[lo] if hi - lo == 1 else a[lo:hi].min()


def high(a, lo, hi):
    """``a[lo:hi].max()``, like ``low``."""
    return a[lo] if hi - lo == 1 else a[lo:hi].max()


@dataclasses.dataclass
class Reply:
    token: object
    arrays: list = dataclasses.field(default_factory=list)   # [(ArrayDesc, np.ndarray)]
    error: Exception = None


@dataclasses.dataclass(slots=True)
class ParkedPull:
    """A sync pull of members ``lo..hi-1`` waiting for their ``step`` to be applied; ``whole``:
    it named the whole entry (not one member of a group); ``rank``: the worker asking."""
    step: int
    lo: int
    hi: int
    whole: bool
    token: object
    rank: int


@dataclasses.dataclass(slots=True)
class ParkedInit:
    """An init answered once rank 0's value is in; its ``dtype``/``shape``/``members`` are
    checked against that value then."""
    token: object
    rank: int
    dtype: str
    shape: tuple
    members: list


class EarlyPush:
    """A pushed array waiting for its turn in the (host, local rank) order; ``flat`` covers
    members ``lo..hi-1``; ``count``: the workers it sums (1, or a whole host's from its
    aggregator, ranks ``rank..rank+count-1``)."""
    __slots__ = ("rank", "count", "lo", "hi", "flat")

    def __init__(self, rank, count, lo, hi, flat):
        self.rank, self.count, self.lo, self.hi, self.flat = rank, count, lo, hi, flat


class PushAck:
    """The ack of a push, due once members ``lo..hi-1`` completed its step."""
    __slots__ = ("token", "lo", "hi")

    def __init__(self, token, lo, hi):
        self.token, self.lo, self.hi = token, lo, hi


class StepMerge:
    """Fixed (host, local rank) order sum of one step's pushes, per member of the entry."""
    __slots__ = ("acc", "host_acc", "next_rank", "early", "tokens")

    def __init__(self, members):
        self.acc = None                                  # flat sum so far (members' slices)
        self.host_acc = None     # flat sum of the current host's pushes (hosts after the first)
        self.next_rank = np.zeros(members, np.int64)     # per member: the rank to add next
        self.early = []     # [EarlyPush]: arrived before its turn
        self.tokens = []    # [PushAck]: due when their members complete the step


class KeyState:
    """A key-part (one member) or a fusion group (many); ``value`` is flat, member ``m`` is
    ``value[bounds[m]:bounds[m + 1]]`` shaped ``shapes[m]``."""
    __slots__ = ("key", "part", "dtype", "shape", "names", "shapes", "bounds", "sync", "value",
                 "failed", "inited_by", "parked_inits", "pushes", "completed", "merges",
                 "parked_pulls", "opt_state", "group_state", "group_steps", "free")

    def __init__(self, key, part, dtype, shape, sync, num_workers, members=None):
        self.key, self.part, self.dtype, self.shape = key, part, dtype, tuple(shape)
        self.sync = sync
        self.value = None
        self.failed = None       # the error of an update that raised: the entry is unusable
        self.inited_by = set()
        self.parked_inits = []   # [ParkedInit]
        self.merges = {}         # step -> StepMerge
        self.parked_pulls = []   # [ParkedPull]
        self.free = []           # a spare flat buffer (no page faults per step)
        self.set_members(members, num_workers)

    def set_members(self, members, num_workers):
        """Lay the entry out as ``members`` ([(key, shape)]; None: the entry is one plain key)."""
        members = members or [(self.key, self.shape)]
        self.names = [k for k, _ in members]
        self.shapes = [tuple(s) for _, s in members]
        self.bounds = [0]
        for s in self.shapes:
            self.bounds.append(self.bounds[-1] + int(np.prod(s, dtype=np.int64)))
        self.pushes = np.zeros((num_workers, len(members)), np.int64)   # pushes received
        self.completed = np.zeros(len(members), np.int64)               # steps applied
        self.reset_optimizer_state()

    def reset_optimizer_state(self):
        self.opt_state = [None] * len(self.names)   # per member: the optimizer's state dict
        self.group_state = None    # a group under an elementwise optimizer: state of the flat value
        self.group_steps = None    # ... and every member's update count ("t"), in one array

    def layout(self):
        return list(zip(self.names, self.shapes))

    @property
    def grouped(self):
        return len(self.names) > 1 or self.names[0] != self.key

    @property
    def label(self):
        """How errors name a group: its first and last key and its size."""
        return f"{self.names[0]!r}..{self.names[-1]!r} ({len(self.names)} keys fused)"

    def member_view(self, flat, m):
        return flat[self.bounds[m]:self.bounds[m + 1]].reshape(self.shapes[m])


class NoGuard:
    """Default buffer guard: nothing is ever in flight (in-process use)."""
    def busy(self, array):
        return False

    def shared(self, array):
        return False

    def wait(self, array):
        pass
