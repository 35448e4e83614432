"""Checksums of files (each read once per version of the file in a process) and a model folder's
fingerprint: its content, wherever it is mounted, so the same weights under another path keep
every output made with them.

It hashes the files that decide how the model is built and how text becomes tokens and back
(config, generation config, tokenizer, chat template), each weight file's name and size, and each
safetensors file's header (every tensor's name, dtype, shape and offsets): a few MB read, even for
140 GB of weights. Weights replaced in place by others of the same names, shapes and sizes are not
seen: give such a model another name in the registry."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CONTENT_FILES = frozenset({
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "chat_template.jinja",
    "chat_template.json",
})
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".gguf", ".pt", ".pth"})
MAX_HEADER = 100_000_000     # the safetensors format's own limit on its JSON header

_DIGESTS: dict[tuple, str] = {}


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256, computed once per version of the file in this process: a plan checks
    each upstream shard for every stage downstream of it, and each model of a run many times."""
    return _once_per_version(path, "file", _sha256_of_file)


def model_fingerprint(folder: str | Path) -> str:
    """The hash of ``folder``'s content (files it does not name, a README, do not count)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no model folder at {folder} (no config.json)")
    parts = {}
    for path in sorted(folder.iterdir()):
        if path.name in CONTENT_FILES:
            parts[path.name] = file_sha256(path)
        elif path.suffix in WEIGHT_SUFFIXES:
            header = (_once_per_version(path, "safetensors header", _sha256_of_header)
                      if path.suffix == ".safetensors" else None)
            parts[path.name] = {"bytes": path.stat().st_size, "header": header}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _once_per_version(path: str | Path, what: str, digest) -> str:
    """``digest(open file, path)``, kept for this version of the file: the same inode, size and
    modification and change times (ns); an atomic rename or any write makes a new version."""
    st = os.stat(path)
    version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, what)
    if version not in _DIGESTS:
        with open(path, "rb") as f:
            _DIGESTS[version] = digest(f, path)
    return _DIGESTS[version]


def _sha256_of_file(f, path: Path) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def _sha256_of_header(f, path: Path) -> str:
    return hashlib.sha256(_header(f, path)).hexdigest()


def _header(f, path: Path) -> bytes:
    """The JSON header of a safetensors file: 8 bytes of little-endian length, then the JSON."""
    length = int.from_bytes(f.read(8), "little")
    header = f.read(length) if 0 < length <= MAX_HEADER else b""
    if not header or len(header) != length:
        raise ValueError(f"{path}: not a safetensors file (no header of {length} bytes after its first 8)")
    return header
