"""Running the bench's worker script (``job.py``) as a real job under ``psframe-launch`` and
collecting every worker's ``RESULT`` line."""
import json
import logging
import os
import subprocess
import sys

logger = logging.getLogger("psframe.bench")

JOB_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "job.py")
CHECKPOINT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoint_job.py")


def run_job(num_workers, num_servers, kind, spec, ns, tag="", prefix=(), launch_args=(),
            script=JOB_SCRIPT, host_tier=False):
    """Run ``script`` (default ``job.py``) with ``spec`` under ``psframe-launch`` (its argv after ``prefix``, e.g.
    ``ip netns exec HOST``, with ``launch_args`` such as the ssh launcher's flags); returns every
    worker's RESULT, by rank. ``ns`` gives ``transport``, ``timeline``, ``job_timeout`` and
    ``verbose``. Ctrl-C or SIGTERM of the bench (an exception here) stops the job first.
    ``host_tier``: workers of one host go through its aggregator; off, every worker talks to the
    servers itself, which is what the bench's comparisons with raw pyzmq traffic measure.

    Raises:
        RuntimeError: the job failed or ran past ``ns.job_timeout``.
    """
    cmd = [*prefix, sys.executable, "-m", "psframe_launcher", *launch_args,
           "--host-tier" if host_tier else "--no-host-tier",
           "-n", str(num_workers), "-s", str(num_servers),
           "--kvstore", kind, "--env", "PSFRAME_TIMEOUT=120",
           "--env", f"PSFRAME_IPC={int(ns.transport == 'ipc')}"]
    trace = None
    if ns.timeline:
        stem, ext = os.path.splitext(os.path.abspath(ns.timeline))
        trace = f"{stem}.{num_servers}x{num_workers}.{kind}{tag}{ext or '.json'}"
        cmd += ["--env", f"PSFRAME_TIMELINE={trace}"]
    cmd += [script, json.dumps(spec)]
    logger.info("job: %d servers x %d workers, %s, %s", num_servers, num_workers, kind,
                os.path.basename(script))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=ns.job_timeout)
    except BaseException as exc:    # the timeout, or Ctrl-C / SIGTERM of the bench
        proc.terminate()     # the launcher stops the whole job on SIGTERM
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        if not isinstance(exc, subprocess.TimeoutExpired):
            raise
        raise RuntimeError(f"bench job did not finish within {ns.job_timeout:g}s:\n{out[-3000:]}")
    if ns.verbose:
        sys.stderr.write(out)
    results = [json.loads(l.split("] RESULT ", 1)[1]) for l in out.splitlines() if "] RESULT " in l]
    if proc.returncode != 0 or len(results) != num_workers:
        raise RuntimeError(f"bench job failed (exit {proc.returncode}):\n{out[-3000:]}")
    if trace:
        from .. import timeline
        logger.info("timeline %s: %d events", trace, timeline.merge(trace))
    return sorted(results, key=lambda r: r["rank"])
