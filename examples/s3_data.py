"""Read training shards from an S3(-compatible) endpoint with psframe.data, and measure it.

Each worker reads only its share (rank and num_workers come from psframe-launch, or 0/1 when run
alone). Credentials come from the usual AWS environment variables or profile, never from argv.

    # any S3-compatible endpoint; e.g. a local moto_server:
    moto_server -H 127.0.0.1 -p 5555 &
    export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-west-2
    python examples/s3_data.py --endpoint-url http://127.0.0.1:5555 --url s3://psf-demo/train \\
        --write --compare-local
    psframe-launch -n 4 --env AWS_ACCESS_KEY_ID --env AWS_SECRET_ACCESS_KEY \\
        --env AWS_DEFAULT_REGION examples/s3_data.py --endpoint-url http://127.0.0.1:5555 \\
        --url s3://psf-demo/train

With ``--write`` it first writes a synthetic dataset (rank 0 only). It then reads one epoch as
fast as it can (MB/s), with ``--compare-local`` also from a local copy in the same run, and runs a
simulated training loop (``--step-ms`` of compute per batch) with and without background prefetch
to show how much of the read time prefetch hides.
"""
import argparse
import logging
import os
import statistics
import tempfile
import time

import fsspec
import numpy as np

import psframe
import psframe.config


def synthetic(records, width, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((records, width), dtype=np.float32)
    y = np.arange(records, dtype=np.int64)
    return {"x": x, "y": y}


def open_dataset(url, args, options, prefetch):
    """The worker's dataset; one warm-up epoch reads the listing and the shard headers."""
    ds = psframe.data.PartitionedDataset(url, args.batch_size, seed=0, prefetch=prefetch,
                                         storage_options=options)
    for _ in ds:
        pass
    return ds


def read_epoch(ds, step_s=0.0, epochs=1):
    """One measured run of ``epochs`` epochs from a cold start (a fresh epoch number, so nothing
    read ahead earlier counts), with ``step_s`` of simulated compute per batch.

    Returns:
        ``(seconds, bytes, batches, waited)``; ``waited`` is the time the loop spent waiting for
        the next batch, i.e. the read time it could not overlap with compute.
    """
    ds.set_epoch(ds.epoch + 1)
    t0, nbytes, batches, waited = time.perf_counter(), 0, 0, 0.0
    for _ in range(epochs):
        it = iter(ds)
        while True:
            t = time.perf_counter()
            batch = next(it, None)
            waited += time.perf_counter() - t
            if batch is None:
                break
            nbytes += sum(a.nbytes for a in batch.values())
            batches += 1
            if step_s:
                time.sleep(step_s)   # stands in for forward/backward on the batch
    return time.perf_counter() - t0, nbytes, batches, waited


def raw_get(url, options):
    """MB/s of plain whole-object GETs of every shard through fsspec (no psframe)."""
    fs, root = fsspec.core.url_to_fs(url, **options)
    paths = sorted(p for p in fs.ls(root, refresh=True) if p.endswith(".npz"))
    t0 = time.perf_counter()
    nbytes = sum(len(b) for b in fs.cat(paths).values())
    return nbytes / 1e6 / (time.perf_counter() - t0)


def training_loop(plain, ahead, step_s, epochs=2):
    """A simulated training loop over ``epochs`` epochs, without and with prefetch."""
    serial, _, _, wait_plain = read_epoch(plain, step_s, epochs)
    overlapped, _, _, wait_ahead = read_epoch(ahead, step_s, epochs)
    return {"loop, prefetch=0 s": serial, "loop, prefetch=2 s": overlapped,
            "waited for data, prefetch=0 s": wait_plain,
            "waited for data, prefetch=2 s": wait_ahead,
            "read time hidden by prefetch %": 100 * (1 - wait_ahead / max(wait_plain, 1e-9))}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--endpoint-url", required=True, help="S3 endpoint, e.g. http://127.0.0.1:5555")
    p.add_argument("--url", default="s3://psf-demo/train", help="dataset directory URL")
    p.add_argument("--write", action="store_true", help="write a synthetic dataset first")
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--width", type=int, default=256, help="float32 features per record")
    p.add_argument("--shards", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--step-ms", type=float, default=5.0, help="simulated compute per batch")
    p.add_argument("--compare-local", action="store_true",
                   help="also write/read a local copy and report both throughputs")
    p.add_argument("--repeat", type=int, default=3, help="measurements (medians are printed)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = psframe.config.from_env()
    options = {"endpoint_url": args.endpoint_url}
    if os.environ.get("AWS_DEFAULT_REGION"):   # s3fs needs it explicitly to create the bucket
        options["client_kwargs"] = {"region_name": os.environ["AWS_DEFAULT_REGION"]}
    local = os.path.join(tempfile.gettempdir(), "psframe-s3-data-local")
    if args.write and cfg.rank == 0:
        data = synthetic(args.records, args.width)
        psframe.data.write_partitions(data, args.url, args.shards, storage_options=options)
        if args.compare_local:
            psframe.data.write_partitions(data, local, args.shards)
        print(f"wrote {args.records} records ({sum(a.nbytes for a in data.values()) / 1e6:.1f} MB)"
              f" as {args.shards} shards to {args.url}")
    kv = psframe.create() if cfg.launched else None   # join the job: ranks wait for the write
    if kv is not None:
        kv.barrier()
    tag = f"[rank {cfg.rank}/{cfg.num_workers}]"
    sources = [("s3", args.url, options)] + ([("local", local, None)] if args.compare_local else [])
    datasets = {name: open_dataset(url, args, opts, prefetch=0) for name, url, opts in sources}
    plain, ahead = datasets["s3"], open_dataset(args.url, args, options, prefetch=2)
    rows = []
    for _ in range(args.repeat):   # interleaved, so load changes hit every variant alike
        row = {}
        if cfg.num_workers == 1:
            row["s3 raw GET (baseline)"] = raw_get(args.url, options)
        for name, ds in datasets.items():
            secs, nbytes, _, _ = read_epoch(ds)
            row[f"{name} dataset read"] = nbytes / 1e6 / secs
        row.update(training_loop(plain, ahead, args.step_ms / 1000))
        rows.append(row)
    for ds in [ahead, *datasets.values()]:
        ds.close()
    for key in rows[0]:
        values = sorted(r[key] for r in rows)
        unit = "%" if key.endswith("%") else ("s" if key.endswith("s") else "MB/s")
        print(f"{tag} {key:32s} median {statistics.median(values):8.2f} {unit:4s} "
              f"(min {values[0]:.2f}, max {values[-1]:.2f}, n={len(values)})")
    if kv is not None:
        kv.barrier()
        kv.close()


if __name__ == "__main__":
    main()
