"""The CUDA path: what the engine and the study do differently on a GPU, and that it works there.

First, the decisions, checked everywhere with `torch.cuda.is_available` or `resolve_device`
patched: on a GPU there is one training process (no worker pool, so no `torch.set_num_threads(1)`
initializer), `run_many` trains in this process one run at a time, and the glibc allocator setting
(`lib.pool.keep_freed_memory`, a CPU matter of the worker processes only) is left alone. Then the runs, which need a GPU and are skipped
elsewhere: a round trained on CUDA equals the same round trained on the CPU (float64, models
without dropout: a CUDA generator draws other masks than a CPU one), every optimizer's fused or
foreach step runs on CUDA, evaluation on CUDA counts like evaluation on the CPU, data prepared on
the CPU trains on the GPU, and a cached run on CUDA records its GPU.
"""
import numpy as np
import pytest
import torch

from lib import engine, experiments, pool

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")
SEEDS = [3, 7, 11]


def small_config(**overrides):
    options = dict(model="NetWSAL", optimizer="SGD", lr=0.1, nb_train=32, nb_val=16, nb_test=16, batch_size=16,
                   epochs=2, device="cuda")
    return engine.TrainConfig(**{**options, **overrides})


@pytest.fixture
def pretend_cuda(monkeypatch):
    """torch says CUDA is available (nothing may actually run on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


class Stop(Exception):
    """Raised by a patched step to end a call once its decisions are made."""


# ----------------------------------------------------------------------------- decisions (everywhere)


def test_auto_picks_cuda_when_present_and_the_cpu_otherwise(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert engine.resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engine.resolve_device("auto") == torch.device("cpu")


def test_one_training_process_on_a_gpu(pretend_cuda, monkeypatch):
    assert engine.default_workers("cuda") == 1 and engine.default_workers("auto") == 1
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 16)
    assert engine.default_workers("cpu") == 8  # one per core, capped


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_train_rounds_leaves_the_allocator_alone(monkeypatch, device):
    """The glibc allocator setting (through ctypes) is the worker processes' business, not train_rounds'."""
    calls = []
    monkeypatch.setattr(engine, "resolve_device", lambda name="auto": torch.device(device))
    monkeypatch.setattr(pool, "keep_freed_memory", lambda: calls.append(True))
    monkeypatch.setattr(engine, "prepare_rounds", lambda *args, **kwargs: (_ for _ in ()).throw(Stop()))
    with pytest.raises(Stop):
        engine.train_rounds(small_config(device=device), SEEDS)
    assert calls == []


def test_the_worker_initializer_sets_the_allocator(monkeypatch):
    import signal

    calls, threads, handler = [], torch.get_num_threads(), signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(pool, "keep_freed_memory", lambda: calls.append(True))
    try:
        pool.start_worker()
        assert calls == [True] and torch.get_num_threads() == 1
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # Ctrl-C is the main process's
    finally:
        torch.set_num_threads(threads)
        signal.signal(signal.SIGINT, handler)


def test_train_rounds_parallel_starts_no_worker_on_a_gpu(monkeypatch):
    monkeypatch.setattr(engine, "resolve_device", lambda name="auto": torch.device("cuda"))
    monkeypatch.setattr(pool, "resolve_device", lambda name="auto": torch.device("cuda"))
    monkeypatch.setattr(pool, "worker_pool", lambda workers: pytest.fail("a worker pool was started"))
    calls = []
    monkeypatch.setattr(pool, "train_rounds", lambda config, seeds, data_dir=None: calls.append(seeds) or "result")
    assert pool.train_rounds_parallel(small_config(), SEEDS, workers=4) == "result"
    assert calls == [SEEDS]  # all rounds at once, in this process


def fake_run_cached(calls):
    def run_cached(config, seeds, folder, force=False, progress=False):
        calls.append(config.model)
        return {"model": config.model}
    return run_cached


def refuse_pool(*args, **kwargs):
    raise Stop("a process pool was asked for")


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_run_many_trains_gpu_runs_here_one_at_a_time(pretend_cuda, monkeypatch, tmp_path, device):
    import concurrent.futures

    calls = []
    monkeypatch.setattr(experiments, "run_cached", fake_run_cached(calls))
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", refuse_pool)
    jobs = [(small_config(model=m, device=device), SEEDS) for m in ("NetWS", "NetWSAL", "NetAL")]
    records = experiments.run_many(jobs, tmp_path, workers=2)
    assert calls == ["NetWS", "NetWSAL", "NetAL"] and [r["model"] for r in records] == calls


def test_run_many_still_spreads_cpu_runs_over_processes(monkeypatch, tmp_path):
    """The counterpart: CPU runs with workers=2 do ask for the pool (refused here, so nothing runs)."""
    import concurrent.futures

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pool.shutdown_workers()  # a pool left by an earlier test would be reused
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", refuse_pool)
    jobs = [(small_config(model=m, device="auto"), SEEDS) for m in ("NetWS", "NetWSAL")]
    with pytest.raises(Stop, match="pool"):
        experiments.run_many(jobs, tmp_path, workers=2)


def test_provenance_names_the_gpu_only_for_a_gpu_run(monkeypatch):
    assert not {"gpu", "cuda"} & set(experiments.provenance("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    record = experiments.provenance("cuda")
    assert record["gpu"] == "Some GPU" and record["device"] == "cuda" and "cuda" in record


# ----------------------------------------------------------------------------- on a GPU


def assert_close_states(got, want, atol):
    assert got.keys() == want.keys()
    for key in want:
        assert torch.allclose(got[key].cpu(), want[key].cpu(), rtol=0, atol=atol), key


@needs_cuda
@pytest.mark.parametrize("model", ["NetWSAL", "NetAL", "SimpleCNN"])
def test_a_round_on_cuda_equals_the_same_round_on_the_cpu(model):
    """float64, plain SGD: CUDA and CPU kernels differ by rounding only (about 1e-16)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        config = small_config(model=model)
        on_gpu = engine.train_rounds(config, SEEDS)
        on_cpu = engine.train_rounds(engine.TrainConfig(**{**config.to_dict(), "device": "cpu"}), SEEDS)
    finally:
        torch.set_default_dtype(previous)
    assert on_gpu.device == "cuda" and next(on_gpu.model.parameters()).is_cuda
    assert on_cpu.device == "cpu"
    for r in range(len(SEEDS)):
        assert_close_states(engine.round_state_dict(on_gpu.model, r), engine.round_state_dict(on_cpu.model, r), 1e-9)
    assert np.allclose(on_gpu.history["train_loss"], on_cpu.history["train_loss"], rtol=1e-9, atol=0)
    for metric in ("train_acc", "val_acc", "test_acc"):
        assert np.nanmax(np.abs(on_gpu.history[metric] - on_cpu.history[metric])) <= 1 / 16 + 1e-9, metric


@needs_cuda
def test_dropout_masks_come_from_cuda_generators():
    result = engine.train_rounds(small_config(model="DigitCompare", optimizer="Adam", lr=1e-3, epochs=1), SEEDS)
    dropouts = [m for m in result.model.modules() if isinstance(m, engine.StackedDropout)]
    assert dropouts and all(g.device.type == "cuda" for m in dropouts for g in m.generators)
    assert np.isfinite(result.history["train_loss"]).all()


@needs_cuda
@pytest.mark.parametrize("optimizer", list(engine.OPTIMIZERS))
def test_every_optimizer_steps_on_cuda(optimizer):
    """The fused (SGD, Adam, AdamW, Adagrad) and foreach (Adadelta, RMSprop) steps exist on CUDA."""
    lr = {"Adadelta": 1.0, "SGD": 0.1}.get(optimizer, 1e-2)
    result = engine.train_rounds(small_config(optimizer=optimizer, lr=lr, epochs=1), SEEDS[:2])
    initial = engine.build_model("NetWSAL", SEEDS[1]).state_dict()
    state = engine.round_state_dict(result.model, 1)
    assert max((state[k].cpu() - v).abs().max().item() for k, v in initial.items()) > 1e-3


@needs_cuda
def test_evaluation_on_cuda_counts_like_on_the_cpu():
    result = engine.train_rounds(small_config(epochs=1), SEEDS)
    _, (x, t, c), _ = engine.prepare_rounds(result.config, SEEDS)  # on the CPU
    model = result.model
    on_gpu = engine.evaluate(model, x.cuda(), t.cuda(), c.cuda(), len(SEEDS), pairs_per_call=7)
    on_cpu = engine.evaluate(model.cpu(), x, t, c, len(SEEDS))
    for gpu, cpu in zip(on_gpu, on_cpu):
        assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, atol=1 / 16 + 1e-6)


@needs_cuda
def test_rounds_data_prepared_on_the_cpu_train_on_the_gpu():
    config = small_config(epochs=1)
    result = engine.train_rounds(config, SEEDS, rounds_data=engine.prepare_rounds(config, SEEDS))
    assert result.device == "cuda" and np.isfinite(result.history["val_acc"]).all()


@needs_cuda
def test_parallel_and_run_many_train_in_this_process_on_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(pool, "worker_pool", lambda workers: pytest.fail("a worker pool was started"))
    result = pool.train_rounds_parallel(small_config(epochs=1), SEEDS, workers=2)
    assert result.device == "cuda" and result.seeds == SEEDS
    import concurrent.futures

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", refuse_pool)
    jobs = [(small_config(model=m, epochs=1, device="auto"), SEEDS[:2]) for m in ("NetWS", "NetWSAL")]
    records = experiments.run_many(jobs, tmp_path, workers=2)
    for record in records:
        assert record["device"] == "cuda" and record["provenance"]["gpu"] == torch.cuda.get_device_name()
