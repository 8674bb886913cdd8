"""Buckets: the KVStore keys psframe.torch pushes, one per large parameter or per run of small ones.

A bucket owns a flat host buffer its gradients are copied into (so backward may go on
accumulating into ``.grad`` while the buffer is on the wire) and, for the servers' weights, one
the pulled values land in. With CUDA parameters the buffers are pinned and the device-to-host
copies run on a side stream, started as each gradient becomes ready; a push waits only for its
own copy (a CUDA event).
"""
#: Parameters smaller than this share a fused key (and message) with their neighbours.
FUSION_BYTES = 64 * 1024


class Bucket:
    """One key: a large parameter alone, or consecutive small ones fused into a flat buffer.

    ``priority``: higher for the first layers (their values are needed first by the next
    forward). Per step: ``ready`` holds the indices of the parameters whose gradient backward
    produced since the bucket was last pushed; ``pending`` is its pushpull in flight."""

    def __init__(self, key, params, priority):
        import torch
        self.key, self.params, self.priority = key, params, priority
        self.sizes = [p.numel() for p in params]
        self.cuda = params[0].is_cuda
        host = torch.zeros(sum(self.sizes), dtype=params[0].dtype, pin_memory=self.cuda)
        self._host = host                 # keeps the (pinned) memory alive
        self.buf = host.numpy()
        self.out = None                   # where pulled weights land (ServerOptimizer)
        self.ready, self.pending, self.copied = set(), None, None
        self.launched_at = -1             # the step (count of step() calls) it was last pushed in

    @property
    def nbytes(self):
        return self.buf.nbytes

    def gather(self, stream=None):
        """Copy the parameters' gradients (zeros for a parameter without one) into ``buf``. On
        CUDA the copies go on ``stream`` after the work that produced the gradients, and
        ``copied`` is the event that marks them done; on the CPU they are done on return."""
        import torch
        off, dst = 0, self._host
        if self.cuda and stream is not None:
            stream.wait_stream(torch.cuda.current_stream(self.params[0].device))
            with torch.cuda.stream(stream):
                for p, n in zip(self.params, self.sizes):
                    self._copy(dst[off:off + n], p, non_blocking=True)
                    if p.grad is not None:
                        p.grad.record_stream(stream)    # not reused before the copy is done
                    off += n
                self.copied = torch.cuda.Event()
                self.copied.record(stream)
            return
        for p, n in zip(self.params, self.sizes):
            self._copy(dst[off:off + n], p, non_blocking=False)
            off += n

    @staticmethod
    def _copy(dst, p, non_blocking):
        if p.grad is None:
            dst.zero_()
        else:
            dst.copy_(p.grad.detach().reshape(-1), non_blocking=non_blocking)

    def wait_copied(self):
        """Block until the device-to-host copies of ``gather`` are done (CUDA only)."""
        if self.copied is not None:
            self.copied.synchronize()
            self.copied = None

    def scatter(self, tensors, flat, scale=1.0):
        """Copy ``flat * scale`` back into the tensors (gradients or weights)."""
        import torch
        off = 0
        with torch.no_grad():
            for t, n in zip(tensors, self.sizes):
                src = torch.from_numpy(flat[off:off + n]).view_as(t)
                t.copy_(src * scale if scale != 1.0 else src)
                off += n


def buckets(params, prefix, fusion_bytes):
    """Split ``params`` (in order) into buckets: large ones alone, runs of small ones of one
    dtype and device fused up to ``fusion_bytes``. The first bucket gets the highest priority."""
    runs, run, run_bytes = [], [], 0
    for p in params:
        nbytes = p.numel() * p.element_size()
        if run and (nbytes >= fusion_bytes or run[0].dtype != p.dtype or run[0].device != p.device
                    or run_bytes + nbytes > fusion_bytes):
            runs.append(run)
            run, run_bytes = [], 0
        run.append(p)
        run_bytes += nbytes
        if nbytes >= fusion_bytes:
            runs.append(run)
            run, run_bytes = [], 0
    if run:
        runs.append(run)
    return [Bucket(f"{prefix}:{i}", r, len(runs) - i) for i, r in enumerate(runs)]
