"""How a worker's failures reach the job, and the job's failures reach the worker.

The job watches the worker through heartbeats (``peers.HeartbeatThread``, which also notices a
lost scheduler or an aborted job); the worker reports its own failure at once (``report``, and
the process-wide excepthook for uncaught exceptions); a data call that timed out leaves the
job (``leaves_on_timeout``).
"""
import functools
import os
import sys

from ..config import EXIT_ABORTED_BY_PEER
from ..errors import PeerLostError, PSTimeoutError, stopped_by_peer_line
from ..protocol import Command, codec
from ..transport import peers, sockets


def leaves_on_timeout(method):
    """A data call that timed out may leave zmq holding the caller's arrays: queued sends would
    go out whenever the server reads again, carrying whatever the caller writes into its arrays
    from now on, and a late reply would land in an ``out`` the caller has moved on from (a
    silent wrong result). So the worker leaves now: the job is told (it stops, as for any failed
    worker), the sockets close without linger (queued sends are dropped), and later calls say
    why."""
    @functools.wraps(method)
    def call(self, *args):
        try:
            return method(self, *args)
        except PSTimeoutError as exc:
            self._closed_by = f"a call timed out: {exc}"
            self._abandon(exc)
            raise
    return call


class Failures:
    """One worker's link to the job's failure handling: its heartbeats to the scheduler, its
    own failure reports over ``scheduler`` (the worker's scheduler socket), and the excepthook
    that reports an uncaught exception of the process ``store`` runs in."""

    def __init__(self, ctx, config, name, scheduler, store):
        self.crashed = False        # this worker failed: close() must not wait on the job
        self._scheduler, self._name = scheduler, name
        # every heartbeat carries the worker's call record (stall diagnosis)
        self._heartbeat = peers.HeartbeatThread(ctx, config, name,
                                                status=lambda: {"calls": store.calls.wire()})
        self._heartbeat.start()
        self._hook = ExceptHook.install(store)

    def check(self):
        """Raise if the job is gone (the scheduler was lost or aborted the job)."""
        self._heartbeat.check()

    @property
    def job_alive(self):
        return self._heartbeat.reason is None

    def report(self, reason, send=True):
        """Mark this worker failed and (``send``) tell the scheduler, so the job stops now."""
        self.crashed = True
        if send:
            sockets.send_frames(self._scheduler, codec.encode(Command.ABORT, 0, self._name,
                                                              body={"reason": reason}))

    def stop(self, store):
        """``store`` is closing: no more reports on its behalf, heartbeats end."""
        if self._hook.store is store:
            self._hook.store = None
        self._heartbeat.stop()
        self._heartbeat.join(timeout=5)


class ExceptHook:
    """``sys.excepthook`` once a dist KVStore was opened in the process (installed once; stays
    for the victims' exit status). Uncaught exceptions: a worker's own failure stops the job
    at once (not after a heartbeat timeout), through the open ``store``; a worker stopped by
    another's failure exits EXIT_ABORTED_BY_PEER so the launcher does not take it for the root
    cause."""

    def __init__(self, previous):
        self.previous, self.store = previous, None

    @classmethod
    def install(cls, store):
        hook = sys.excepthook
        if not isinstance(hook, cls):
            hook = sys.excepthook = cls(hook)
        hook.store = store
        return hook

    def __call__(self, exc_type, exc, tb):
        if issubclass(exc_type, PeerLostError):
            sys.stderr.write(stopped_by_peer_line(exc))
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_ABORTED_BY_PEER)
        if self.store is not None:
            try:
                self.store.report_failure(f"uncaught {exc_type.__name__}: {exc}")
            except Exception:   # the report is best effort; the traceback below is what matters
                pass
        self.previous(exc_type, exc, tb)
