"""Manual check against a live HDFS (none exists on the CI machine, so this is not collected by
pytest): write a dataset, read it back as 2 workers, every record exactly once.

    python tests/live_hdfs_check.py hdfs://namenode:port/scratch-dir
"""
import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_data_dataset import all_workers, epoch_ids, records  # noqa: E402

from psframe.data import write_partitions  # noqa: E402


def main(base):
    url = base.rstrip("/") + f"/psframe-test-{uuid.uuid4().hex[:8]}"
    write_partitions(records(100), url, num_shards=3)
    ids = sum((epoch_ids(d) for d in all_workers(url, 2, 10, seed=1)), [])
    assert sorted(sum(ids, [])) == list(range(100)), "records missing or repeated"
    print(f"ok: 100 records read exactly once from {url}")


if __name__ == "__main__":
    main(sys.argv[1])
