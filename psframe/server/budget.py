"""A server's memory budget: the bytes of the values it holds plus their optimizer state,
checked before an ``init`` takes any memory, so a key that does not fit is a clear error
instead of a server that grows until the machine kills it."""
import os

import numpy as np

from ..errors import MemoryBudgetError

PROBE = 64     # elements of the probe weight an optimizer's state is measured on


def physical_memory():
    """Bytes of RAM of this machine (0 where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


class MemoryBudget:
    """``limit`` bytes (0: the machine's physical memory) for ``name``'s values + state."""

    def __init__(self, limit, name):
        self.limit = limit or physical_memory()
        self.explicit = bool(limit)
        self.name = name
        self.charged = {}           # (key, part) -> (nbytes, dtype)
        self._optimizer = None
        self._factor = {}           # dtype -> optimizer state bytes per weight byte

    def set_optimizer(self, optimizer):
        """From now on each held byte also carries ``optimizer``'s state.

        Raises:
            MemoryBudgetError: the values already held, with that state, exceed the budget.
        """
        previous, factors = self._optimizer, self._factor
        self._optimizer, self._factor = optimizer, {}
        try:
            self._check(self.used(), "installing the optimizer")
        except MemoryBudgetError:
            self._optimizer, self._factor = previous, factors
            raise

    def used(self):
        return sum(self._cost(n, d) for n, d in self.charged.values())

    def charge(self, descs, known):
        """Account for the key-parts of ``descs`` not yet held (``known(ident)`` is False).

        Raises:
            MemoryBudgetError: naming the keys, their bytes, the budget and the fixes; nothing
                is charged then.
        """
        new = {}
        for d in descs:
            ident = (d.key, d.part)
            if ident not in self.charged and ident not in new and not known(ident):
                new[ident] = (d.nbytes, d.dtype)
        if not new:
            return
        extra = sum(self._cost(n, dt) for n, dt in new.values())
        names = list(dict.fromkeys(k for k, _ in new))
        keys = ", ".join(repr(k) for k in names[:3]) + (" ..." if len(names) > 3 else "")
        self._check(self.used() + extra, f"initialising {keys} ({extra} bytes with optimizer state)")
        self.charged.update(new)

    def _check(self, total, what):
        if total > self.limit:
            source = ("PSFRAME_SERVER_MEMORY_BYTES" if self.explicit else
                      "this machine's physical memory; set PSFRAME_SERVER_MEMORY_BYTES to choose")
            raise MemoryBudgetError(
                f"{self.name}: {what} would make it hold {total} bytes of values and optimizer "
                f"state, over its memory budget of {self.limit} bytes ({source}); raise the "
                f"budget, run more servers (-s) or hold smaller keys")

    def _cost(self, nbytes, dtype):
        if self._optimizer is None:
            return nbytes
        factor = self._factor.get(dtype)
        if factor is None:
            factor = self._factor[dtype] = self._state_factor(dtype)
        return int(nbytes * (1 + factor))

    def _state_factor(self, dtype):
        """Bytes of optimizer state per byte of weight, measured on a probe weight."""
        weight = np.zeros(PROBE, dtype)
        try:
            state = self._optimizer.create_state("psframe-budget-probe", weight)
        except Exception:     # the real create_state will raise with a clear message
            return 0.0
        held = sum(a.nbytes for a in (state or {}).values()
                   if isinstance(a, np.ndarray) and a.size == PROBE)
        return held / weight.nbytes
