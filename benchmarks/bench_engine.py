"""Time the plain one-model loop against the engine, in one run, on the same machine.

    python benchmarks/bench_engine.py [--rounds 20] [--epochs 3] [--plain-models 3] [--repeats 3] [--model NetWSAL]
                                      [--device auto|cpu|cuda]

(a) the seed reports' loop, one model at a time (lib/baseline.py) with torch's default Adam and
the default memory allocator, as they ran it; (b) the engine training the R rounds as the study
runs it: `train_rounds_parallel`, the rounds split over one single-threaded process per core
(lib/pool.py). Each round: 1000 training pairs, batch 25, Adam, lr 1e-3, the 1000 test pairs
evaluated once at the end. In between it also times (a') the same plain loop given the engine's
own CPU settings (fused Adam, freed memory kept in the heap) and (b') the engine in this one
process (`train_rounds`, all R rounds at once on every core), to show where the speed-up comes
from. Every loop gets a warm-up run first (one-off kernel set-up; for (b), starting the worker
processes). The warm-up has the timed run's sizes (1000 pairs, 1000 test pairs), one epoch,
so that memory the timed run needs is already mapped. Each loop is then timed `--repeats` times
and the fastest time counts, as `timeit` does (the machine is shared: a slow spell only ever
adds time); every time is printed. On a GPU (`--device cuda`, or `auto` with one) the engine is
`train_rounds` in this process (no worker processes, no CPU allocator setting), and every timing
waits for the GPU's queued work. Prints ms per model-epoch, peak memory, and last:

    speedup: <ratio>x (plain <a> ms, engine <b> ms per model-epoch)
"""
import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lib.baseline import train_plain  # noqa: E402
from lib.engine import TrainConfig, default_workers, resolve_device, train_rounds  # noqa: E402
from lib.pool import keep_freed_memory, shutdown_workers, train_rounds_parallel  # noqa: E402


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="NetWSAL")
    parser.add_argument("--rounds", type=int, default=20, help="rounds trained together by the engine")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per model")
    parser.add_argument("--plain-models", type=int, default=3, help="models trained one after another by the plain loop")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each loop; the fastest counts")
    parser.add_argument("--workers", type=int, default=None,
                        help="engine worker processes (default: one per CPU core; 1 on a GPU)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu or cuda")
    args = parser.parse_args(argv)
    if min(args.rounds, args.epochs, args.plain_models, args.repeats) < 1:
        parser.error("--rounds, --epochs, --plain-models and --repeats must be at least 1")

    config = TrainConfig(model=args.model, optimizer="Adam", lr=1e-3, batch_size=25, epochs=args.epochs,
                         nb_train=1000, nb_val=0, nb_test=1000, eval_every=args.epochs, device=args.device)
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    on_gpu = device.type == "cuda"
    gpu = f" ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})" if on_gpu else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}{gpu}, "
          f"cpus {os.cpu_count()}; {args.model}, 1000 pairs, batch 25, Adam, {args.epochs} epochs")
    warm = TrainConfig(**{**config.to_dict(), "epochs": 1, "eval_every": 1})
    seeds, warm_seeds = range(args.rounds), range(10_000, 10_000 + args.rounds)
    workers = default_workers(config.device) if args.workers is None else args.workers

    def sync():  # a GPU runs asynchronously: wait for its queued work before reading the clock
        if on_gpu:
            torch.cuda.synchronize(device)

    def time_plain(**options):
        sync()
        start = time.perf_counter()
        for k in range(args.plain_models):
            train_plain(config, seed=k, **options)
        sync()
        return (time.perf_counter() - start) * 1000 / (args.plain_models * args.epochs)

    def time_engine(train):
        sync()
        start = time.perf_counter()
        train(config, seeds=seeds)
        sync()
        return (time.perf_counter() - start) * 1000 / (args.rounds * args.epochs)

    def parallel(config, seeds):
        return train_rounds_parallel(config, seeds=seeds, workers=workers)

    def show(times):
        return f"{min(times):.1f} ms per model-epoch (runs: {', '.join(f'{t:.0f}' for t in times)})"

    # (a) and (a') first: keep_freed_memory() changes the allocator for the rest of this process.
    train_plain(warm, seed=10_000, library_optimizer=True)
    plain = [time_plain(library_optimizer=True) for _ in range(args.repeats)]
    print(f"plain loop (seed reports): {args.plain_models} models one at a time: {show(plain)}")
    if not on_gpu:  # a CPU allocator setting: nothing to do with GPU memory
        keep_freed_memory()
    train_plain(warm, seed=10_000)
    tuned = [time_plain() for _ in range(args.repeats)]
    print(f"plain loop, engine's {'GPU' if on_gpu else 'CPU'} settings: {show(tuned)}")

    train_rounds(warm, seeds=warm_seeds)
    rss_before = peak_rss_mb()
    single = [time_engine(train_rounds) for _ in range(args.repeats)]
    print(f"engine in this process: {args.rounds} rounds at once: {show(single)} "
          f"({min(tuned) / min(single):.1f}x the tuned plain loop)")
    rss_single = peak_rss_mb()

    if on_gpu:  # train_rounds_parallel is train_rounds on a GPU: no second timing
        engine = single
    else:
        parallel(warm, warm_seeds)  # starts the worker processes
        engine = [time_engine(parallel) for _ in range(args.repeats)]
        print(f"engine, rounds split over {workers} single-threaded process(es): {show(engine)} "
              f"({min(tuned) / min(engine):.1f}x the tuned plain loop)")
    print(f"peak memory (max RSS): this process {peak_rss_mb():.0f} MB (before the engine: {rss_before:.0f} MB, "
          f"after the one-process engine: {rss_single:.0f} MB)")
    if workers > 1 and not on_gpu:
        shutdown_workers()  # the children's peak RSS is known once they have exited
        child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak memory of a worker process: {child_mb:.0f} MB; all processes together at most "
              f"{peak_rss_mb() + workers * child_mb:.0f} MB")
    if on_gpu:
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB")
    plain_ms, engine_ms = min(plain), min(engine)
    print(f"speedup: {plain_ms / engine_ms:.1f}x (plain {plain_ms:.0f} ms, engine {engine_ms:.0f} ms per model-epoch)")


if __name__ == "__main__":
    main()
