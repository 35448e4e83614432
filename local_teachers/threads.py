"""One CPU thread setting per process, from the CPUs it may use, applied before an engine or
training starts: vLLM, transformers and training all run on torch's (OpenMP) thread pool.

The CPUs a process may use are its affinity: the whole machine for a local run; on a SLURM node
the job's allocation (the job script binds itself to it where SLURM does not), so jobs sharing a
node run on disjoint cores instead of each spinning threads on all of them."""
from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger(__name__)


def allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


@functools.cache
def fit_threads() -> int:
    """Threads = the CPUs this process may use; MAPD_THREADS (or OMP_NUM_THREADS) asks for fewer.
    Once per process: vLLM's CPU worker refuses torch.set_num_threads once it has started."""
    cpus = allowed_cpus()
    asked = os.environ.get("MAPD_THREADS") or os.environ.get("OMP_NUM_THREADS")
    n = min(int(asked), len(cpus)) if asked else len(cpus)
    os.environ["OMP_NUM_THREADS"] = str(n)
    # vLLM's own binding, for an engine with worker processes: the same CPUs.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cpus[:n])))
    import torch

    torch.set_num_threads(n)
    log.info("%d CPU thread(s) on CPU(s) %s", n, ",".join(map(str, cpus[:n])))
    return n
