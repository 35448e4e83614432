import json
import os
import stat

import polars as pl
import pytest

from mapd.batch.config import request_seed, shard_slice
from mapd.batch.shards import (StaleShardError, fingerprint, manifest_path, read_stage, shard_path,
                               why_not_done, write_shard)

IDENTITY = {"stage": "exam", "task": "svamp", "limit": 16, "seed": 731}


def _write(stage_dir, i, n, identity=IDENTITY, rows=3):
    df = pl.DataFrame({"question_id": [f"q{i}-{k}" for k in range(rows)], "x": list(range(rows))})
    path = shard_path(stage_dir, i, n)
    write_shard(df, path, identity, stage="exam", shard=i)
    return path, df


def test_written_shard_is_done_and_has_a_complete_manifest(tmp_path):
    path, df = _write(tmp_path, 0, 2)
    manifest = json.loads(manifest_path(path).read_text())
    assert manifest["rows"] == 3 and manifest["fingerprint"] == fingerprint(IDENTITY)
    assert manifest["identity"] == IDENTITY and manifest["shard"] == 0
    assert why_not_done(path, IDENTITY) is None
    assert pl.read_parquet(path).equals(df)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_reasons_for_redoing_a_shard(tmp_path):
    path = shard_path(tmp_path, 0, 1)
    assert why_not_done(path, IDENTITY) == "not written yet"
    _write(tmp_path, 0, 1)
    changed = {**IDENTITY, "limit": 32}
    assert why_not_done(path, changed) == "written by another configuration (limit: 16 -> 32)"
    added = {**IDENTITY, "adapter_sha256": None}    # a setting newer code records
    assert why_not_done(path, added) == "written by another configuration (adapter_sha256: (none) -> None)"
    path.write_bytes(path.read_bytes()[:-10])       # a truncated file
    assert "checksum" in why_not_done(path, IDENTITY)
    path.unlink()
    assert why_not_done(path, IDENTITY) == "its Parquet file is missing"


def test_read_stage_refuses_missing_and_stale_shards(tmp_path):
    _write(tmp_path, 0, 3)
    _write(tmp_path, 1, 3, identity={**IDENTITY, "seed": 1})
    with pytest.raises(StaleShardError) as err:
        read_stage(tmp_path, 3, lambda i: IDENTITY)
    message = str(err.value)
    assert "shard-00001-of-00003.parquet: written by another configuration (seed: 1 -> 731)" in message
    assert "shard-00002-of-00003.parquet: not written yet" in message
    _write(tmp_path, 1, 3)
    _write(tmp_path, 2, 3)
    df = read_stage(tmp_path, 3, lambda i: IDENTITY)
    assert df["question_id"].to_list()[:4] == ["q0-0", "q0-1", "q0-2", "q1-0"] and df.height == 9


def test_failed_write_keeps_the_previous_shard(tmp_path):
    path, df = _write(tmp_path, 0, 1)

    class Unwritable:
        height = 1

        def write_parquet(self, f):
            f.write(b"partial")
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_shard(Unwritable(), path, IDENTITY)
    assert pl.read_parquet(path).equals(df) and why_not_done(path, IDENTITY) is None
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_shard_slices_cover_every_item_once():
    items = list(range(10))
    slices = [shard_slice(items, i, 3) for i in range(3)]
    assert slices == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert shard_slice(items[:2], 2, 3) == [1]
    with pytest.raises(ValueError):
        shard_slice(items, 3, 3)


def test_request_seeds_are_stable_and_distinct():
    assert request_seed(731, "exam", "chal-1") == request_seed(731, "exam", "chal-1")
    seeds = {request_seed(731, "exam", f"chal-{i}") for i in range(1000)}
    assert len(seeds) == 1000 and all(0 <= s < 2**31 for s in seeds)
    assert request_seed(732, "exam", "chal-1") != request_seed(731, "exam", "chal-1")


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_honour_the_umask(tmp_path, mask, mode):
    """Written atomically (through a private temporary file), yet as readable as the umask says:
    on a shared filesystem the group reads a teammate's shards."""
    old = os.umask(mask)
    try:
        write_shard(pl.DataFrame({"a": [1]}), tmp_path / "s.parquet", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s.parquet").stat().st_mode) == mode
    assert stat.S_IMODE(manifest_path(tmp_path / "s.parquet").stat().st_mode) == mode


def test_a_checksum_follows_every_write_of_the_file(tmp_path):
    """Checksums are remembered per version of a file; a rewrite in place, same size, is a new one."""
    from mapd.local_teachers.fingerprint import file_sha256

    path = tmp_path / "f"
    path.write_bytes(b"a" * 64)
    first = file_sha256(path)
    assert file_sha256(path) == first
    path.write_bytes(b"b" * 64)
    assert file_sha256(path) != first
    path.write_bytes(b"a" * 64)
    assert file_sha256(path) == first

