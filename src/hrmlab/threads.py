"""CPU threads that behave on shared machines.

PyTorch's OpenMP runtime (libgomp) keeps one thread per core and lets idle threads spin between parallel
regions. When other processes share the cores, a spinning thread holds the time slice the working thread
needs, and every parallel region waits for it (docs/benchmarks.md, "Training beside other work": 3.5-3.7x
slower steps beside one busy process per core, against 1.4-1.8x for hrmlab's setting). Passive waiting
avoids that spin. The waiting policy is read once, when the OpenMP runtime loads, so `configure_process()`
must run before torch is imported:
the CLI calls it first, every pool worker, torchrun rank and Modal container inherits or repeats it.

The number of threads a CPU training run uses changes its floating-point reductions and therefore its
weights, so it is a stated setting (`train_<model>.cpu_threads`, one by default), resolved here to a number
that enters the training stage's cache key: a shared cache never hands out a model trained under another
thread count. One thread is the default because on a small model a second one buys little on a quiet
machine and costs the most on a busy one, where every parallel region waits for a thread that another
process holds.
"""

from __future__ import annotations

import os

PROCESS_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
"""Environment defaults for OpenMP; a variable the user set in their own environment always wins."""


def configure_process() -> dict[str, str]:
    """Set the OpenMP defaults this process and its children start with (the user's own variables win).
    Returns the variables it set. Call before torch (or numba) is first imported."""
    applied = {}
    for name, value in PROCESS_DEFAULTS.items():
        if name not in os.environ:
            os.environ[name] = value
            applied[name] = value
    return applied


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: `taskset`, cgroups' cpusets), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
        return max(1, os.cpu_count() or 1)


def resolve_cpu_threads(requested: int) -> int:
    """The intra-op thread count a CPU run uses: `requested` if positive; 0 means every CPU this process
    may use, capped by OMP_NUM_THREADS when the user set it."""
    if requested < 0:
        raise ValueError(f"cpu_threads must be >= 0 (0 = every available CPU), got {requested}")
    if requested:
        return requested
    cpus = available_cpus()
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return min(cpus, int(env))
    return cpus


def use_cpu_threads(requested: int) -> int:
    """Make torch use the resolved thread count in this process; returns it."""
    import torch

    n = resolve_cpu_threads(requested)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def flush_subnormals() -> bool:
    """Make this thread's float arithmetic flush subnormal numbers (|x| < 1.2e-38) to zero; returns whether
    the CPU supports it (x86 with SSE3: the FTZ and DAZ bits).

    Why: long runs at high learning rates drive some of Adam's moments and gradients into the subnormal range,
    where every x86 operation on them takes a slow microcode path. A patrol LSTM run at lr 3e-2 went from
    115 to 1,700 ms per step after step ~1,000, with both cores busy and nothing else running
    (docs/benchmarks.md, "Subnormal numbers"). Flushing changes values only below 1.2e-38, whose effect on an
    update (lr·m/(√v + 1e-8)) is below 1e-30.

    The setting is per thread and stays for the rest of the process (evaluation after training included).
    Threads created after the call inherit it; torch's pool threads that already exist do not (checked: with
    a 2-thread pool created first, half of a subnormal product stays unflushed). So a run calls it before it
    sets its thread count; the study's runs use one thread, and a multi-threaded run in a process that already
    ran parallel torch work flushes only on its calling thread."""
    import torch

    return bool(torch.set_flush_denormal(True))
