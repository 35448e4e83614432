"""Installed as a wheel, the project is one import name, `mapd`, with its prompts, model entries,
task data and SLURM template inside: from another folder, in a clean virtual environment,
`mapd --help` works, every prompt renders and every task loads."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

CHECK = """
import string
from pathlib import Path

import mapd
from mapd.batch.prompts import load_prompt, prompts_dir
from mapd.batch.tasks import TASKS
from mapd.local_teachers.registry import known_models, load_spec

assert Path(mapd.__file__).is_relative_to(Path(__import__("sys").prefix)), mapd.__file__
rendered = 0
for path in sorted(prompts_dir().rglob("*.txt")):
    prompt = load_prompt(str(path.relative_to(prompts_dir()).with_suffix("")))
    names = {m[1] or m[2] for m in string.Template.pattern.findall(prompt.text) if m[1] or m[2]}
    assert prompt.render(**dict.fromkeys(names, "x"))
    rendered += 1
loaded = {f"{t.name}/{split}": len(t.load(split)) for t in TASKS.values() for split in ("train", "test")}
assert all(loaded.values()), loaded
assert all(load_spec(name).name == name for name in known_models())
print(rendered, "prompts,", len(loaded), "splits,", len(known_models()), "model entries")
"""


def test_the_wheel_installs_one_mapd_package_that_works_from_anywhere(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheels.glob("mapd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"mapd"}
    for data in ("mapd/prompts/peer_review/math.txt", "mapd/local_teachers/models/smollm2-135m-instruct.yaml",
                 "mapd/batch/data/gsm8k/train.jsonl", "mapd/slurm/templates/stage.sbatch"):
        assert data in names, data

    # A clean environment: the wheel alone, and the project's dependencies from this one
    # (a .pth line puts this environment's site-packages after the new one's; nothing is downloaded).
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   text=True).strip()
    Path(site, "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(env_dir / "bin" / "mapd"), "--help"], cwd=elsewhere, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0 and "distill" in out.stdout and "run-stage" in out.stdout, out.stderr
    out = subprocess.run([str(python), "-c", CHECK], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    prompts = len(list((ROOT / "prompts").rglob("*.txt")))
    models = len(list((ROOT / "local_teachers" / "models").glob("*.yaml")))
    assert out.stdout.strip() == f"{prompts} prompts, 8 splits, {models} model entries", out.stdout
