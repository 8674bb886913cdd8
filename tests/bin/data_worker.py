"""A worker for the data tests: reads its share of a dataset for some epochs and writes the
record ids of every batch to ``OUT_DIR/rank-<rank>.json``. Rank and num_workers come from the
environment (PSFRAME_RANK/PSFRAME_NUM_WORKERS, or psframe-launch); S3 credentials from AWS_*.

usage: data_worker.py URL OUT_DIR EPOCHS BATCH_SIZE [ENDPOINT_URL]
"""
import json
import logging
import os
import sys

import psframe
import psframe.config


def main():
    url, out_dir, epochs, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    options = {"endpoint_url": sys.argv[5]} if len(sys.argv) > 5 else {}
    logging.basicConfig(level=logging.INFO)
    cfg = psframe.config.from_env()
    # Under psframe-launch, join the job like a training script does, so it ends cleanly.
    kv = psframe.create() if cfg.launched else None
    ds = psframe.data.PartitionedDataset(url, batch_size, seed=7, storage_options=options,
                                         timeout=30, retries=2, retry_backoff=0.1)
    result = {"rank": cfg.rank, "num_workers": cfg.num_workers, "len": len(ds),
              "files": ds.files, "epochs": []}
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        result["epochs"].append([batch["y"].tolist() for batch in ds])
    ds.close()
    with open(os.path.join(out_dir, f"rank-{cfg.rank}.json"), "w") as f:
        json.dump(result, f)
    if kv is not None:
        kv.barrier()
        kv.close()


if __name__ == "__main__":
    main()
