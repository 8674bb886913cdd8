"""Key placement and slicing: pure, deterministic, byte-balanced."""
from psframe.sharding import CHUNK_BYTES, PlacementState, chunked, parts_of, slice_bounds


def test_slices_are_near_equal_and_cover_everything():
    b = slice_bounds(3_000_003, 2)
    assert b == [(0, 1_500_002), (1_500_002, 3_000_003)]
    assert slice_bounds(5, 3) == [(0, 2), (2, 4), (4, 5)]


def test_parts_of_whole_and_sliced_keys():
    assert [(p.server, p.start, p.stop) for p in parts_of(1, 10, 3)] == [(1, 0, 10)]
    assert [(p.server, p.part, p.size) for p in parts_of(-1, 10, 3)] == [(0, 0, 4), (1, 1, 3), (2, 2, 3)]


def test_placement_balances_bytes_and_slices_big_keys():
    p = PlacementState(num_servers=2, bigarray_bound=100)
    assert p.place("a", 50, 400) == 0
    assert p.place("b", 10, 80) == 1
    assert p.place("c", 10, 80) == 1        # server 1 still holds fewer bytes
    assert p.place("a", 50, 400) == 0       # first placement is final
    assert p.place("big", 1000, 8000) == -1
    assert p.load == [4400, 4160]


def test_big_parts_are_chunked_in_order_and_cover_the_key():
    per = CHUNK_BYTES // 4
    size = 5 * per + 7
    parts = parts_of(-1, size, 2, itemsize=4)
    assert [p.part for p in parts] == list(range(len(parts)))
    assert all(p.size <= per for p in parts)
    assert parts[0].start == 0 and parts[-1].stop == size
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
    assert {p.server for p in parts} == {0, 1}
    small = parts_of(0, 10, 2)
    assert chunked(small, per) is small          # small keys keep their one part
