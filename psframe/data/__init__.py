"""Partitioned training data over fsspec URLs (S3, HDFS, local, memory): each worker reads only
its share, shuffled per epoch from a shared seed, prefetched in the background."""
from .dataset import PartitionedDataset
from .writer import write_partitions

__all__ = ["PartitionedDataset", "write_partitions"]
