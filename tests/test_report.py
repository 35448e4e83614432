"""The run report on a real run directory: exam, teach, review and eval written by the real
stages with scripted models (each answers by a script, so the scores and accuracies are known),
training real QLoRA on the tiny model; the page checked for its content, and rendered in
headless Chromium."""
from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from mapd.batch.config import RunConfig
from mapd.batch.graph import Graph
from mapd.batch.local import results, run_local
from mapd.batch.report import write_report
from mapd.cli import main

from fakes import ScriptedEngine, ScriptedPool

TEACHERS = ("tiny-teacher-a", "tiny-teacher-b", "tiny-teacher-c")
# reviewer -> author -> the review's last line: a no score and an out-of-range one among them.
REVIEWS = {"tiny-teacher-a": {"b": "[4]", "c": "[5]"}, "tiny-teacher-b": {"a": "[5]", "c": "I cannot tell."},
           "tiny-teacher-c": {"a": "[3]", "b": "[9]"}}
FEEDBACK = "Check step 2 <b>carefully</b> & again."
TRAIN = ["--epochs", "1", "--batch-size", "2", "--lora-r", "8"]
DATA_URI = re.compile(r'src="data:image/png;base64,([^"]+)"')


def _answer(name, gold, test):
    """One scripted model's answers. The student is wrong on every train question; on the test
    split it is right on the first question alone, and with an adapter on all but the last.
    Teachers a and c reach the gold answer, b does not (the answer check rejects it)."""
    def answer(request, adapter):
        text = request.messages[0][1]
        if text.startswith("You are reviewing"):
            author = re.search(r"by teacher (\w)", text)[1]
            return f"Reviewed.\n{REVIEWS[name][author]}"
        if "Student's solution" in text:
            return f"Feedback by {name}: {FEEDBACK}"
        question = text.split("Problem: ", 1)[1].strip()
        if name == "tiny-llama":
            i = test.index(question) if question in test else None
            right = i is not None and (i < 3 if adapter else i == 0)
            return f"The answer is {gold[question] if right else 999999}."
        final = 123456 if name == "tiny-teacher-b" else gold[question]
        return f"Solved by teacher {name[-1]}: step 1, step 2.\nThe answer is {final}."
    return answer


def _pool(graph) -> ScriptedPool:
    """The student and every teacher, each answering by its script."""
    questions = graph.one("exam").questions + graph["eval/base"].questions
    gold = {q.text: q.gold for q in questions}
    test = [q.text for q in graph["eval/base"].questions]
    return ScriptedPool({name: ScriptedEngine(_answer(name, gold, test)) for name in ("tiny-llama", *TEACHERS)})


@pytest.fixture(scope="module")
def registry(tiny_spec_file, tmp_path_factory):
    """The tiny model's registry entry as the student, and under the teachers' names."""
    folder = tmp_path_factory.mktemp("report-registry")
    raw = yaml.safe_load(tiny_spec_file.read_text())
    for name in TEACHERS:
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({**raw, "name": name}))
    return {"student": str(tiny_spec_file), "teachers": tuple(str(folder / f"{n}.yaml") for n in TEACHERS)}


def _cfg(run_dir, registry):
    return RunConfig(task="svamp", run_dir=run_dir, limit=4, num_shards=2, student=registry["student"],
                     teachers=registry["teachers"], train_overrides=(("epochs", 1), ("batch_size", 2), ("lora_r", 8)))


def _cli_args(run_dir, registry):
    return ["--task", "svamp", "--run-dir", str(run_dir), "--limit", "4", "--test-limit", "4", "--num-shards", "2", "--student",
            registry["student"], "--teachers", ",".join(registry["teachers"]), *TRAIN]


@pytest.fixture(scope="module")
def through_dataset(registry, tmp_path_factory):
    """A run with exam, teach, review and dataset done."""
    run_dir = tmp_path_factory.mktemp("report") / "run"
    graph = Graph(_cfg(run_dir, registry))
    run_local(graph, _pool(graph), through="dataset")
    return run_dir


def _pngs(page: str) -> list[Image.Image]:
    images = []
    for data in DATA_URI.findall(page):
        raw = base64.b64decode(data)
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")
        images.append(Image.open(io.BytesIO(raw)))
    return images


def test_a_partial_run_reports_what_exists_and_names_what_is_missing(through_dataset, registry, tmp_path):
    empty = write_report(Graph(_cfg(tmp_path / "empty", registry)), 1000.0).read_text()
    for missing in ("eval not run yet", "review not run yet", "dataset not written yet", "train not run yet",
                    "exam not run yet", "<td>eval/distilled</td><td>not run yet</td>"):
        assert missing in empty
    assert "data:image/png" not in empty

    graph = Graph(_cfg(through_dataset, registry))
    page = write_report(graph, 1000.0).read_text()
    assert "eval not run yet" in page and "train not run yet: not trained yet" in page
    # Heatmap, one histogram panel per reviewer, questions by accepted rationales, per teacher.
    images = _pngs(page)
    assert len(images) == 4 and all(image.width > 100 and image.height > 100 for image in images)
    assert 'alt="mean score, reviewer x author"' in page
    # The statistics: a and c accepted on all 4 questions, b rejected by the answer check.
    assert "accepted rationales per teacher: tiny-teacher-a 4/4, tiny-teacher-b 0/4, tiny-teacher-c 4/4" in page
    assert "questions by number of accepted rationales: 0: 0, 1: 0, 2: 4, 3: 0" in page
    # An example: the question, the student's wrong answer, escaped feedback, scored rationale.
    exam = graph.one("exam").results()
    assert html.escape(exam["question"][0]) in page and "The answer is 999999." in page
    assert html.escape(FEEDBACK) in page and FEEDBACK not in page
    assert re.search(r"scores: tiny-teacher-\w (\d|no score), tiny-teacher-\w (\d|no score); mean \d\.\d", page)
    # Timings from the manifests, and the full-size estimate: svamp's 700 train questions are
    # 175 x this run's 4, so the exam's 4 generations become 700, each teacher's 8 become 1,400.
    assert re.search(r"<td>exam</td><td>2/2</td><td>4</td>", page)
    assert re.search(r"<td>exam</td><td>700</td>", page)
    assert len(re.findall(r"<td>teach/tiny-teacher-\w</td><td>1,400</td>", page)) == 3
    assert "1,000 tokens/s" in page


@pytest.mark.slow
def test_a_complete_run_through_the_cli_renders_in_chromium(through_dataset, registry, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: apt-get install -y --no-install-recommends chromium (.ci/run does)")
    run_dir = tmp_path / "run"
    shutil.copytree(through_dataset, run_dir)
    graph = Graph(_cfg(run_dir, registry))
    graph.one("train").run()                       # real QLoRA on the tiny model
    pool = _pool(graph)
    for stage in (graph["eval/base"], graph["eval/distilled"]):
        stage.run(pool=pool)
    results([graph])

    result = CliRunner().invoke(main, ["report", *_cli_args(run_dir, registry), "--tokens-per-second", "500"])
    assert result.exit_code == 0, result.output
    path = run_dir / "report" / "index.html"
    assert result.output.strip() == str(path)
    page = path.read_text()
    table = json.loads((run_dir / "eval" / "results.json").read_text())
    assert (table["base_accuracy"], table["distilled_accuracy"]) == (0.25, 0.75)
    assert "<td>this run</td><td>tiny-llama</td><td>4</td><td>25.0%</td><td>75.0%</td>" in page
    assert "<td>44.71%</td><td>59.50%</td>" in page and "arXiv 2410.03663" in page
    assert "What differs between the two rows" in page and "<li><b>split</b>: the paper&#x27;s split: ChilleD/SVAMP" in page
    card = json.loads((graph.one("train").adapter / "card.json").read_text())
    assert f"<td>steps</td><td>{card['steps']}</td>" in page and 'class="missing"' not in page
    assert re.search(r"<td>eval/distilled</td><td>300</td>", page) and "500 tokens/s" in page
    assert len(_pngs(page)) == 4

    # Rendered: every image decodes in the browser (natural width > 0), and the page is not blank.
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", "<script>window.addEventListener('load', () => document.body."
                                  "setAttribute('data-widths', [...document.images].map(i => i.naturalWidth)))"
                                  "</script></body>"))
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    widths = re.search(r'data-widths="([\d,]*)"', dom.stdout)
    assert widths, dom.stderr[-2000:]
    assert [int(w) > 0 for w in widths[1].split(",")] == [True] * 4
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1600", path.as_uri()],
                   capture_output=True, timeout=120, check=True)
    colors = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50
