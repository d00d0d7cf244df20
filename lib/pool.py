"""The one worker pool: every training spread over processes goes through `run_jobs`.

Its two callers: `lib.experiments.run_many` (one cached run per job: every study, the best model,
verify) and `train_rounds_parallel` below (one run's rounds cut into consecutive chunks of seeds and
merged back into one result with its weights: the benchmark, the error study). The workers are
spawned (no fork of a process holding OpenMP threads), single-threaded, started by the first call
and reused by later ones. Jobs that train on a GPU run in the calling process, one at a time.

A job may train a class defined outside lib/ (a notebook's inline network, `lib.models.model_spec`):
every such variant travels with the job, pickled by value with cloudpickle, and is registered in
the worker before the job runs, so the worker trains that class and not the library's.
"""
import atexit
import contextlib
import ctypes
import signal
import time
from typing import Sequence

import cloudpickle
import numpy as np
import torch

from lib import models
from lib.engine import (METRICS, TrainConfig, TrainResult, build_model, check_seeds, default_workers, resolve_device,
                        split_seeds, stack_models, train_rounds)

_POOL = None  # (workers, ProcessPoolExecutor), started by the first call that needs processes


def keep_freed_memory():
    """Ask glibc to keep freed blocks of up to 32 MB in the heap instead of returning them to the OS.

    Only in processes that do nothing but train (the workers, and the benchmark, which times them):
    a step frees and allocates the same tens of megabytes each time, and by default glibc unmaps
    and maps them again, paying page faults (docs/performance.md). No effect off glibc."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD: the largest value glibc accepts
        libc.mallopt(-1, 1024 * 1024 * 1024)  # M_TRIM_THRESHOLD


def start_worker():
    """Initializer of a worker: one thread, the allocator setting (a worker only trains, so the
    memory it keeps costs no one else), and Ctrl-C left to the main process, which stops the
    workers itself (a worker that caught it would abandon its job and start the next one)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    keep_freed_memory()


def worker_pool(workers):
    """The pool of `workers` processes, started on first use and kept for later calls (a call with
    another count replaces it); each process is spawned when a job first needs it."""
    global _POOL
    if _POOL is not None and _POOL[0] != workers:
        shutdown_workers()
    if _POOL is None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        _POOL = workers, ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=start_worker)
    return _POOL[1]


def shutdown_workers(terminate=False):
    """Let the workers finish their jobs and exit (the next call that needs them starts new ones);
    with `terminate`, stop them at once, jobs in progress included (Ctrl-C, a dead worker)."""
    global _POOL
    if _POOL is None:
        return
    pool, _POOL = _POOL[1], None
    if terminate:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=10)
    pool.shutdown(wait=not terminate, cancel_futures=True)


atexit.register(shutdown_workers)


def uses_processes(jobs, workers):
    """Whether `run_jobs` would spread these jobs over processes: more than one job and one worker,
    and every job's config (its first item) on the CPU."""
    return workers > 1 and len(jobs) > 1 and all(resolve_device(job[0].device).type == "cpu" for job in jobs)


def _call(payload):
    """Worker side of run_jobs: register the variants that came with the job, then run it."""
    fn, job, variants = cloudpickle.loads(payload)
    models.add_variants(variants)
    return fn(*job)


def run_jobs(fn, jobs, workers=1, on_done=None):
    """[fn(*job) for job in jobs], each job's first item being the TrainConfig it trains.

    Spread over `workers` processes when `uses_processes`, else run here one after another.
    `on_done(index, result)` is called as each job finishes. Ctrl-C terminates the workers at once
    and raises KeyboardInterrupt; an error in a job lets the jobs in progress finish (a cached run
    is saved by its job), starts no other, and is raised."""
    jobs, done = list(jobs), on_done or (lambda index, result: None)
    results = [None] * len(jobs)
    if not uses_processes(jobs, workers):
        for i, job in enumerate(jobs):
            results[i] = fn(*job)
            done(i, results[i])
        return results
    from concurrent.futures import as_completed, wait
    from concurrent.futures.process import BrokenProcessPool

    pool, variants, futures = worker_pool(workers), models.variants(), {}
    try:
        for i, job in enumerate(jobs):
            futures[pool.submit(_call, cloudpickle.dumps((fn, job, variants)))] = i
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            done(futures[future], results[futures[future]])
    except KeyboardInterrupt:
        shutdown_workers(terminate=True)
        raise
    except BrokenProcessPool:
        shutdown_workers(terminate=True)
        raise RuntimeError("a training worker process died (out of memory?); the pool was dropped and the next "
                           "call starts a new one. Try fewer workers or fewer rounds at once.") from None
    except BaseException:
        for future in futures:
            future.cancel()
        try:
            wait(futures)
        except KeyboardInterrupt:
            shutdown_workers(terminate=True)
        raise
    return results


# ----------------------------------------------------------------------------- one run's rounds over the workers


def _train_chunk(config, seeds, data_dir):
    """Worker side of train_rounds_parallel: the result, and the trained weights apart from the
    model (whose dropout generators cannot be pickled)."""
    result = train_rounds(config, seeds, data_dir=data_dir)
    state = {k: v.cpu() for k, v in result.model.state_dict().items()}
    result.model = None
    return result, state


def merge_stacked_states(config, seeds, states):
    """One stacked model of all `seeds` from the state dicts of consecutive chunks of them."""
    template = build_model(config.model, seeds[0], arch=config.arch, **config.model_options)  # weights replaced below
    model = stack_models([template] * (len(seeds) * config.ensemble))
    merged = {key: value if value.dim() == 0 else torch.cat([state[key] for state in states])
              for key, value in states[0].items()}
    model.load_state_dict(merged)
    return model


def train_rounds_parallel(config: TrainConfig, seeds: Sequence[int], workers=None, data_dir=None) -> TrainResult:
    """`train_rounds(config, seeds)` with the rounds cut into one consecutive chunk of seeds per
    worker (default: one per CPU core), each chunk trained at once by `run_jobs`, then merged.

    Rounds are independent, so the result holds the same rounds as one call would, in the same
    order (up to float rounding: a chunk stacks fewer rounds). On a GPU, or with one worker, it is
    `train_rounds` in this process."""
    config.validate()
    seeds = check_seeds(seeds, "train_rounds_parallel")
    workers = default_workers(config.device) if workers is None else workers
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    jobs = [(config, chunk, data_dir) for chunk in split_seeds(seeds, workers)]
    if not uses_processes(jobs, workers):
        return train_rounds(config, seeds, data_dir=data_dir)
    start_time = time.perf_counter()
    parts = run_jobs(_train_chunk, jobs, workers)
    results = [r for r, _ in parts]
    return TrainResult(config=config, seeds=seeds,
                       history={m: np.concatenate([r.history[m] for r in results]) for m in METRICS},
                       diverged_epoch=[d for r in results for d in r.diverged_epoch],
                       wall_time_s=time.perf_counter() - start_time, device=results[0].device,
                       nb_parameters=results[0].nb_parameters,
                       model=merge_stacked_states(config, seeds, [state for _, state in parts]),
                       cpu_time_s=sum(r.cpu_time_s for r in results))
