"""The checkpoint format on its own (local kind, local directories and a moto S3 endpoint): round
trips, numpy-only reading, latest(), worker_state, and clear errors for damaged files."""
import json
import os

import numpy as np
import pytest

import psframe
from psframe import checkpoint
from psframe.checkpoint import worker_state
from psframe.checkpoint.files import Store
from psframe.errors import CheckpointError
from s3_fixtures import moto, storage_options  # noqa: F401 - fixture

KEYS = ["w", 3, "h"]


def make_store(opt=True):
    kv = psframe.create("local")
    rng = np.random.default_rng(0)
    vals = {"w": rng.standard_normal((4, 5)).astype(np.float32),
            3: rng.standard_normal(7).astype(np.float64),
            "h": rng.standard_normal((2, 3)).astype(np.float16)}
    kv.init(KEYS, [vals[k] for k in KEYS])
    if opt:
        kv.set_optimizer(psframe.optim.Adam(lr=0.05, multi_precision=True))
    return kv, vals


def step(kv, vals, i):
    rng = np.random.default_rng(100 + i)
    kv.push(KEYS, [rng.standard_normal(vals[k].shape).astype(vals[k].dtype) for k in KEYS])


def pulled(kv, vals):
    out = {k: np.empty_like(vals[k]) for k in KEYS}
    kv.pull(KEYS, [out[k] for k in KEYS])
    return out


def test_local_round_trip_continues_bitwise_and_returns_worker_state(tmp_path):
    url = str(tmp_path / "ck")
    kv, vals = make_store()
    for i in range(20):
        step(kv, vals, i)
        if i == 6:
            state = {"epoch": 2, "name": "x", "rng": np.arange(5, dtype=np.uint32),
                     "nested": {"lst": [1, 2.5, None, np.float32(1.5)], "ok": True}}
            kv.save_checkpoint(url, worker_state=state)
    reference = pulled(kv, vals)

    kv2, vals2 = make_store()
    got = kv2.load_checkpoint(url)
    assert got["epoch"] == 2 and got["name"] == "x" and got["nested"]["ok"] is True
    assert got["rng"].dtype == np.uint32 and np.array_equal(got["rng"], np.arange(5))
    assert got["nested"]["lst"][:3] == [1, 2.5, None]
    assert got["nested"]["lst"][3].dtype == np.float32 and got["nested"]["lst"][3].shape == ()
    for i in range(7, 20):
        step(kv2, vals2, i)
    resumed = pulled(kv2, vals2)
    for k in KEYS:
        assert resumed[k].dtype == reference[k].dtype
        assert resumed[k].tobytes() == reference[k].tobytes(), k


def test_files_are_plain_npy_readable_with_numpy_alone(tmp_path):
    url = str(tmp_path / "ck")
    kv, vals = make_store()
    for i in range(3):
        step(kv, vals, i)
    kv.save_checkpoint(url)
    expect = pulled(kv, vals)
    # numpy + json only: every piece of every key, from the manifest's records
    manifest = json.load(open(tmp_path / "ck" / "manifest.json"))
    for rec in manifest["keys"]:
        flat = np.empty(int(np.prod(rec["shape"])), rec["dtype"])
        for s, e, m, start, stop in rec["pieces"]:
            entry = manifest["shards"][s]["entries"][e]
            offset = sum(int(np.prod(shape)) for _, shape in entry["members"][:m])
            data = np.load(tmp_path / "ck" / entry["value"]["path"], allow_pickle=False)
            flat[start:stop] = data[offset:offset + stop - start]
        assert np.array_equal(flat.reshape(rec["shape"]), expect[rec["key"]])
    exported = checkpoint.export_weights(url)
    assert set(exported) == set(KEYS)
    for k in KEYS:
        assert exported[k].shape == expect[k].shape and np.array_equal(exported[k], expect[k])


def test_latest_skips_incomplete_and_prefers_highest_step(tmp_path):
    assert checkpoint.latest(str(tmp_path / "none-yet")) is None
    kv, vals = make_store()
    step(kv, vals, 0)
    kv.save_checkpoint(str(tmp_path / "a"))
    step(kv, vals, 1)
    kv.save_checkpoint(str(tmp_path / "b"))
    step(kv, vals, 2)
    kv.save_checkpoint(str(tmp_path / "c"))
    os.remove(tmp_path / "c" / "manifest.json")      # as a save that died before its manifest
    assert checkpoint.latest(str(tmp_path)) == str(tmp_path / "b")
    with pytest.raises(CheckpointError, match="no manifest.json"):
        make_store()[0].load_checkpoint(str(tmp_path / "c"))


def _saved(tmp_path):
    url = str(tmp_path / "ck")
    kv, vals = make_store()
    step(kv, vals, 0)
    kv.save_checkpoint(url, worker_state={"a": np.ones(3)})
    manifest = json.load(open(tmp_path / "ck" / "manifest.json"))
    value = manifest["shards"][0]["entries"][0]["value"]["path"]
    return url, tmp_path / "ck" / value


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend", "header", "delete"])
def test_damaged_value_file_is_an_error_naming_it(tmp_path, damage):
    url, path = _saved(tmp_path)
    blob = bytearray(path.read_bytes())
    if damage == "flip":
        blob[-3] ^= 0x40
    elif damage == "truncate":
        blob = blob[:-5]
    elif damage == "extend":
        blob += b"\0"
    elif damage == "header":
        blob[:6] = b"NOTNPY"
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(bytes(blob))
    for load in (lambda: make_store()[0].load_checkpoint(url), lambda: checkpoint.export_weights(url)):
        with pytest.raises(CheckpointError) as info:
            load()
        assert str(path.relative_to(tmp_path)) in str(info.value), info.value
        assert info.value.url.endswith(path.name)


def test_damaged_manifest_and_worker_state_are_errors_naming_them(tmp_path):
    url, _ = _saved(tmp_path)
    state_file = tmp_path / "ck" / "worker-0" / "0.npy"
    state_file.write_bytes(state_file.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match="worker-0/0.npy.*truncated"):
        make_store()[0].load_checkpoint(url)
    manifest = tmp_path / "ck" / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])
    with pytest.raises(CheckpointError, match="manifest.json is corrupt: not valid JSON"):
        checkpoint.export_weights(url)


def test_loading_into_a_different_job_is_a_clear_error(tmp_path):
    url = str(tmp_path / "ck")
    kv, vals = make_store()
    step(kv, vals, 0)
    kv.save_checkpoint(url)
    other = psframe.create("local")
    other.init("w", np.zeros((5, 4), np.float32))
    with pytest.raises(CheckpointError, match=r"key 'w' is float32\[5, 4\] here but float32\[4, 5\]"):
        other.load_checkpoint(url)
    missing = psframe.create("local")
    missing.init("zzz", np.zeros(2, np.float32))
    with pytest.raises(CheckpointError, match="key 'zzz' is not in checkpoint"):
        missing.load_checkpoint(url)
    no_opt, _ = make_store(opt=False)
    with pytest.raises(CheckpointError, match="holds 'adam' optimizer state but this job has no optimizer"):
        no_opt.load_checkpoint(url)
    sgd, _ = make_store(opt=False)
    sgd.set_optimizer(psframe.optim.SGD())
    with pytest.raises(CheckpointError, match="runs 'sgd'"):
        sgd.load_checkpoint(url)


def test_values_without_optimizer_load_into_a_job_without_one(tmp_path):
    url = str(tmp_path / "ck")
    kv, vals = make_store(opt=False)
    step(kv, vals, 0)
    kv.save_checkpoint(url)
    kv2, vals2 = make_store(opt=False)
    kv2.load_checkpoint(url)
    a, b = pulled(kv, vals), pulled(kv2, vals2)
    assert all(np.array_equal(a[k], b[k]) for k in KEYS)


def test_worker_state_rejects_what_it_cannot_hold(tmp_path):
    store = Store(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"worker_state\['bad'\]\[1\] is a set"):
        worker_state.write(store, 0, {"bad": [1, {2}]})
    with pytest.raises(CheckpointError, match="key 1 is not a str"):
        worker_state.write(store, 0, {1: 2})
    with pytest.raises(CheckpointError, match="Python objects"):
        worker_state.write(store, 0, {"o": np.array([object()])})


def test_s3_round_trip_and_latest(moto):
    so = storage_options(moto.endpoint)
    Store("s3://psf-ckpt", so).fs.mkdir("psf-ckpt")                  # the bucket
    kv, vals = make_store()
    for i in range(4):
        step(kv, vals, i)
        kv.save_checkpoint(f"s3://psf-ckpt/run/step-{i:04d}", worker_state={"i": i},
                           storage_options=so)
    expect = pulled(kv, vals)
    url = checkpoint.latest("s3://psf-ckpt/run", storage_options=so)
    assert url == "s3://psf-ckpt/run/step-0003"
    kv2, vals2 = make_store()
    assert kv2.load_checkpoint(url, storage_options=so) == {"i": 3}
    got = pulled(kv2, vals2)
    assert all(got[k].tobytes() == expect[k].tobytes() for k in KEYS)
    assert all(np.array_equal(v, expect[k]) for k, v in checkpoint.export_weights(url, so).items())
