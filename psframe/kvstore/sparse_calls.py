"""The dist kinds' calls on sparse keys: ``rows`` builds the row messages, these send them on
the store's routes and wait for them (a mixin of ``DistKVStore``, which provides ``_keys``,
``_servers``, ``_send``, ``_customer``, ``_backpressure``, ``_step``, ``calls``, ``rank`` and
``sync``)."""
from ..protocol import Command
from . import rows
from .failures import leaves_on_timeout


class SparseCalls:
    def _row_servers(self):
        return len(self._servers)

    @leaves_on_timeout
    def _init_sparse(self, key, table):
        with self.calls.call("init", [key]):
            info = self._keys[key]
            info.part_acked = [0] * len(self._servers)
            reqs = []
            for s, batch, body in rows.init_messages(key, info, table, self.rank, self.sync):
                if len(reqs) >= rows.INIT_WINDOW:     # bounded: a server holds few chunks at once
                    self._customer.wait(reqs[:1], f"init of sparse key {key!r}")
                    reqs = reqs[1:]
                reqs.append(self._send(rows.lane(s), Command.SPARSE_INIT, batch, body, wait_for_send=True))
            self._customer.wait(reqs, f"init of sparse key {key!r}")

    @leaves_on_timeout
    def _push_sparse(self, key, ids, values):
        with self.calls.call("push", [key], self._step([key], 1)):
            self._customer.wait_sent(self._send_rows(key, (ids, values), None, None))
            self._customer.raise_deferred()

    @leaves_on_timeout
    def _rows_call(self, key, push, ids, land):
        op = "pull" if push is None else "pushpull"
        with self.calls.call(op, [key], self._step([key], 0 if push is None else 1)):
            info, reqs = self._keys[key], []
            if push is not None:
                reqs = self._send_rows(key, push, ids, land)
            if push is None or ids is None:     # a pull, or the whole table after a push
                reqs += [self._send(rows.lane(s), Command.SPARSE_PULL, batch, body)
                         for s, batch, body in rows.pull_messages(key, info, ids, land)]
            self._customer.wait(reqs, f"{op} of sparse key {key!r}")

    def _send_rows(self, key, push, pull_ids, land):
        """Send a push (``pull_ids`` None) or pushpull of ``push`` = (ids, rows)."""
        info = self._keys[key]
        self._backpressure(info)
        info.pushes += 1
        return [self._send(rows.lane(s), cmd, batch, wait_for_send=True)
                for s, cmd, batch in rows.push_messages(key, info, *push, pull_ids, land, self.sync)]
