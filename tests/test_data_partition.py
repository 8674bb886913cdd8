"""Pure parts of psframe.data: record balancing, read blocks, retry classification, prefetch."""
import itertools
import threading
import time

import pytest

from psframe.data import partition, retry
from psframe.data.prefetch import Prefetcher
from psframe.errors import ConfigError, DataError, PSTimeoutError


def expand(share, counts):
    starts = list(itertools.accumulate([0] + list(counts[:-1])))
    return [starts[fi] + i for fi, s, e in share.segments for i in range(s, e)]


@pytest.mark.parametrize("counts", [[10] * 10, [3, 0, 7, 1], [1], [5, 0, 0], [0, 9], [2, 2, 2]])
@pytest.mark.parametrize("workers", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("drop_last", [False, True])
def test_assign_contiguous_equal_and_covering(counts, workers, drop_last):
    total = sum(counts)
    if drop_last and total < workers:
        with pytest.raises(ConfigError, match="fewer than num_workers"):
            partition.assign(counts, 0, workers, drop_last)
        return
    shares = [partition.assign(counts, r, workers, drop_last) for r in range(workers)]
    assert len({s.per_worker for s in shares}) == 1
    ids = [expand(s, counts) for s in shares]
    flat = sum(ids, [])
    if drop_last:
        assert flat == list(range(total // workers * workers))
    else:
        assert flat == [i % total for i in range(-(-total // workers) * workers)]
    for s in shares:   # a worker's files are only those its range touches; no empty segments
        assert all(e > b for _, b, e in s.segments)


def test_assign_files_touched_per_worker():
    share = partition.assign([500, 130, 370], 2, 4)
    assert share.segments == ((1, 0, 130), (2, 0, 120))
    with pytest.raises(ConfigError, match="rank 4"):
        partition.assign([1], 4, 4)
    with pytest.raises(ConfigError, match="no records"):
        partition.assign([0, 0], 0, 1)


def test_split_blocks():
    assert partition.split_blocks([(0, 5, 12), (3, 0, 2)], 3) == [
        (0, 5, 8), (0, 8, 11), (0, 11, 12), (3, 0, 2)]


def test_retry_classification_and_delays():
    assert retry.is_transient(ConnectionResetError())
    assert retry.is_transient(TimeoutError())
    assert not retry.is_transient(FileNotFoundError())
    assert not retry.is_transient(PermissionError())
    assert not retry.is_transient(ValueError())
    assert not retry.is_transient(DataError("x"))
    assert type("EndpointConnectionError", (Exception,), {})() and retry.is_transient(
        type("EndpointConnectionError", (Exception,), {})())
    assert retry.RetryPolicy(attempts=5, backoff=1, max_backoff=3).delays() == [1, 2, 3, 3]
    err = retry.translate(PermissionError("denied"), "s3://b/k", "reading")
    assert isinstance(err, DataError) and "access denied" in str(err) and err.url == "s3://b/k"


def test_retry_call_gives_up_with_url():
    calls = []

    def boom():
        calls.append(1)
        raise ConnectionError("nope")
    with pytest.raises(DataError, match=r"reading s3://b/k failed 3 times"):
        retry.call(boom, "s3://b/k", "reading", retry.RetryPolicy(attempts=3, backoff=0.001))
    assert len(calls) == 3
    with pytest.raises(DataError, match="not found"):
        retry.call(lambda: (_ for _ in ()).throw(FileNotFoundError("k")), "s3://b/k", "reading",
                   retry.RetryPolicy())


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("psframe-prefetch")]


def test_prefetch_order_bound_and_close():
    produced = []

    def source():
        for i in range(100):
            produced.append(i)
            yield i
    p = Prefetcher(source(), depth=3, timeout=5, name="t")
    assert next(p) == 0
    time.sleep(0.3)
    assert len(produced) <= 1 + 3 + 1      # consumed + queued + one blocked in put
    assert [next(p) for _ in range(5)] == [1, 2, 3, 4, 5]
    p.close()
    assert not prefetch_threads()
    assert list(Prefetcher(iter(range(10)), 2, 5)) == list(range(10))


def test_prefetch_reraises_producer_error_in_consumer():
    def source():
        yield 1
        raise DataError("shard s3://b/k vanished", url="s3://b/k")
    p = Prefetcher(source(), depth=2, timeout=5)
    assert next(p) == 1
    with pytest.raises(DataError, match="vanished") as info:
        next(p)
    assert info.value.url == "s3://b/k"
    with pytest.raises(StopIteration):
        next(p)
    time.sleep(0.2)
    assert not prefetch_threads()


def test_prefetch_times_out_instead_of_hanging():
    release = threading.Event()

    def stuck():
        release.wait(10)
        yield 1
    p = Prefetcher(stuck(), depth=1, timeout=0.3, name="s3://b/slow")
    t0 = time.monotonic()
    with pytest.raises(PSTimeoutError, match="s3://b/slow"):
        next(p)
    assert time.monotonic() - t0 < 2
    release.set()
    p.close()
    assert not prefetch_threads()
