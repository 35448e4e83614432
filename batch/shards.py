"""Shard files of a stage and the manifests that say what produced them.

A shard is done when its manifest exists, names the current stage fingerprint and the
checksum of the Parquet file beside it. Files are written atomically (temporary name, fsync,
rename) and the manifest last, so a crash leaves either a finished shard or none.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import polars as pl

from mapd.local_teachers.fingerprint import file_sha256


class StaleShardError(RuntimeError):
    pass


class _Missing:
    def __repr__(self) -> str:
        return "(none)"


MISSING = _Missing()


def fingerprint(identity: dict) -> str:
    """Stable hash of everything that determines a stage's output."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shard_path(stage_dir: Path, shard: int, num_shards: int) -> Path:
    return Path(stage_dir) / f"shard-{shard:05d}-of-{num_shards:05d}.parquet"


def manifest_path(shard_file: Path) -> Path:
    return shard_file.with_suffix(".manifest.json")


def umask() -> int:
    mask = os.umask(0o022)      # the only way to read it is to set it: set it back at once
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file in ``path``'s folder, then rename it over
    ``path``: readers see the old file or the complete new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600 whatever the umask: on a shared filesystem the group
        # should read what a teammate's run wrote, as with any file created under the umask.
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            # e.g. a full disk: say which file could not be written (the temporary name is gone).
            raise OSError(e.errno, f"{e.strerror or e}; could not write", str(path)) from e
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_shard(df: pl.DataFrame, path: Path, identity: dict, **extra) -> dict:
    """Write ``df`` to ``path``, then its manifest: what produced it, row count, checksum."""
    # Encoded in memory first: polars reports a failed file write (a full disk) as a ComputeError
    # without the errno or the path; a plain write raises an OSError that atomic_write names.
    buffer = io.BytesIO()
    df.write_parquet(buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))
    manifest = {**extra, "identity": identity, "fingerprint": fingerprint(identity),
                "rows": df.height, "sha256": file_sha256(path), "file": path.name}
    atomic_write(manifest_path(path), lambda f: f.write(json.dumps(manifest, indent=2, sort_keys=True).encode()))
    return manifest


def read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(manifest_path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def why_not_done(path: Path, identity: dict) -> str | None:
    """None when the shard at ``path`` is complete for this stage identity, else the reason."""
    manifest = read_manifest(path)
    if manifest is None:
        return "not written yet"
    if manifest.get("fingerprint") != fingerprint(identity):
        old, new = _flat(manifest.get("identity", {})), _flat(json.loads(json.dumps(identity, default=str)))
        # A key one side lacks is "(none)", so that a newly added setting shows too.
        changed = sorted(k for k in set(old) | set(new) if old.get(k, MISSING) != new.get(k, MISSING))
        inputs = [k for k in changed if k.startswith("inputs.")]
        settings = [f"{k}: {old.get(k, MISSING)!r} -> {new.get(k, MISSING)!r}" for k in changed if k not in inputs]
        if inputs:
            settings.append("input(s) rewritten since: " + ", ".join(k.removeprefix("inputs.") for k in inputs))
        return "written by another configuration (" + ", ".join(settings) + ")"
    if not path.is_file():
        return "its Parquet file is missing"
    if file_sha256(path) != manifest.get("sha256"):
        return "its Parquet file does not match the checksum in its manifest"
    return None


def _flat(identity: dict, prefix: str = "") -> dict:
    """Nested settings as dotted keys, so a changed value is named exactly."""
    out = {}
    for key, value in identity.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_stage(stage_dir: Path, num_shards: int, identity: Callable[[int], dict]) -> pl.DataFrame:
    """All shards of a finished stage as one frame (``identity(i)``: shard i's current
    identity); refuses missing, stale or corrupt shards rather than mixing outputs of two
    configurations."""
    problems = []
    for i in range(num_shards):
        path = shard_path(stage_dir, i, num_shards)
        reason = why_not_done(path, identity(i))
        if reason:
            problems.append(f"{path}: {reason}")
    if problems:
        raise StaleShardError("stage output is incomplete or stale:\n  " + "\n  ".join(problems))
    return pl.concat([pl.read_parquet(shard_path(stage_dir, i, num_shards)) for i in range(num_shards)],
                     how="diagonal")   # shards of one stage written before and after a column was added
