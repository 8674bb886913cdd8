"""Communication during backward: buckets are pushed as their gradients become ready.

Every parameter gets a ``register_post_accumulate_grad_hook``; once backward has produced every
gradient of a bucket (since the bucket was last pushed), its gradients are copied into the
bucket's own buffer and it joins the launch batch, which goes out as one non-blocking
``kv.pushpull_async`` once it holds ``LAUNCH_BYTES`` (and at the end of backward, through the
autograd engine's final callback, as DDP does). ``step()`` pushes what backward did not (buckets
with a parameter that got no gradient, or that got more after their push) and waits only for
what is still in flight. Inside ``no_sync()`` the hooks do nothing: gradients accumulate locally
and the next backward outside it pushes the total.

With overlap off the same buckets go in one call from ``step()``; the bytes pushed and the sums
are the same either way.
"""
import abc
import contextlib
import functools

from .. import timeline as tl

#: Ready buckets are pushed together once they hold this many bytes (fewer, bigger messages);
#: the rest go when backward ends.
LAUNCH_BYTES = 1 << 20
TRACE_TID = 1000          # the timeline row of psframe.torch's events on a worker


class Overlapped(abc.ABC):
    """What ``DistributedOptimizer`` and ``ServerOptimizer`` share: the buckets, the hooks,
    the launch batch, ``no_sync`` and the timeline events. A subclass says how a bucket is
    prepared (``_prepare``), where its reply lands (``Bucket.out``) and how it is finished
    (``_finish``), and what a second push in one step means (``_again``)."""

    def __init__(self, kv, buckets, overlap):
        self.kv, self.buckets, self.overlap = kv, buckets, overlap
        self._syncing, self._batch, self._batch_bytes = True, [], 0
        self._backward_start = None
        self._steps = 0           # step() calls so far; a bucket's launched_at is one of them
        self._hooks = []
        self._stream = None
        self._trace = kv.timeline
        if self._trace is not None:
            self._trace.name_thread(TRACE_TID, "psframe.torch (backward, step)")
        if any(b.cuda for b in buckets):
            import torch
            self._stream = torch.cuda.Stream(buckets[0].params[0].device)
        if overlap:
            for b in buckets:
                for i, p in enumerate(b.params):
                    self._hooks.append(p.register_post_accumulate_grad_hook(
                        functools.partial(self._on_grad, b, i)))

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside accumulate gradients locally, without pushing (as DDP's
        ``no_sync``); the first backward after it pushes the accumulated gradients."""
        old, self._syncing = self._syncing, False
        try:
            yield
        finally:
            self._syncing = old

    # -- during backward ----------------------------------------------------------------
    def _on_grad(self, b, i, param):
        if not self._syncing:
            return
        if self._backward_start is None:
            import torch
            self._backward_start = tl.now_us()
            torch.autograd.Variable._execution_engine.queue_callback(self._backward_done)
        b.ready.add(i)
        if len(b.ready) < len(b.params):
            return
        if b.pending is not None:
            self._again(b)
        b.ready.clear()
        self._prepare(b)
        if b not in self._batch:
            self._batch.append(b)
            self._batch_bytes += b.nbytes
        if self._batch_bytes >= LAUNCH_BYTES:
            self._launch_batch()

    def _backward_done(self):
        self._launch_batch()
        if self._trace is not None:
            self._trace.complete("backward", "torch", self._backward_start, tl.now_us(), tid=TRACE_TID)
        self._backward_start = None

    def _launch_batch(self):
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if batch:
            self._launch(batch)

    def _launch(self, batch):
        """One non-blocking pushpull of ``batch``'s buffers, at its best bucket's priority."""
        for b in batch:
            b.wait_copied()
        pending = self.kv.pushpull_async([b.key for b in batch], [b.buf for b in batch],
                                         out=[b.buf if b.out is None else b.out for b in batch],
                                         priority=max(b.priority for b in batch))
        for b in batch:
            b.pending, b.launched_at = pending, self._steps

    # -- at step() ----------------------------------------------------------------------
    def _push_rest(self):
        """Push every bucket backward did not push in this step (no gradient for some
        parameter, or gradients accumulated since its push), in one call."""
        self._launch_batch()
        rest = [b for b in self.buckets if b.launched_at != self._steps or b.ready]
        for b in rest:
            if b.pending is not None:
                self._again(b)
            b.ready.clear()
            self._prepare(b)
        if rest:
            self._launch(rest)
        self._steps += 1

    def _wait_all(self, start):
        for b in self.buckets:
            if b.pending is not None:
                self._finish(b)
        if self._trace is not None:
            self._trace.complete("step: wait for the servers", "torch", start, tl.now_us(), tid=TRACE_TID)

    def _gather(self, b):
        b.gather(self._stream)

    # -- what a subclass says -----------------------------------------------------------
    @abc.abstractmethod
    def _prepare(self, b):
        """Fill ``b.buf`` with what this step pushes for ``b``."""

    @abc.abstractmethod
    def _finish(self, b):
        """Wait for ``b``'s pushpull and put its reply where it belongs."""

    @abc.abstractmethod
    def _again(self, b):
        """``b`` is about to be pushed while its earlier pushpull is in flight."""
