"""The one worker pool (lib/pool.py): train_rounds_parallel spreads the rounds of one run over
single-threaded worker processes, run_jobs runs any jobs there.

Each worker trains a consecutive chunk of the seeds with `train_rounds` on one thread; the same
call in this process, on one thread, must give bit-identical histories and weights.
"""
import numpy as np
import pytest
import torch

from lib import engine, pool

SEEDS = [3, 7, 11]


def small_config(**overrides):
    options = dict(model="NetWSAL", optimizer="Adam", lr=1e-3, nb_train=32, nb_val=16, nb_test=16, batch_size=16,
                   epochs=2, device="cpu")
    return engine.TrainConfig(**{**options, **overrides})


@pytest.fixture(scope="module")
def one_thread():
    """This process on one thread, like the workers, so that results can be compared bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    pool.shutdown_workers()


@pytest.mark.parametrize("seeds, parts, expected", [
    ([1, 2, 3, 4, 5], 2, [[1, 2, 3], [4, 5]]),
    ([1, 2, 3], 3, [[1], [2], [3]]),
    ([1, 2], 5, [[1], [2]]),
    (range(4), 1, [[0, 1, 2, 3]]),
])
def test_split_seeds_cuts_consecutive_chunks(seeds, parts, expected):
    assert engine.split_seeds(seeds, parts) == expected


@pytest.mark.parametrize("model", ["NetWSAL", "DigitCompare"])  # the second has batch norm and dropout
def test_parallel_rounds_equal_the_same_chunks_trained_here(one_thread, model):
    config = small_config(model=model)
    result = pool.train_rounds_parallel(config, SEEDS, workers=2)
    chunks = [engine.train_rounds(config, chunk) for chunk in engine.split_seeds(SEEDS, 2)]  # [3, 7], [11]
    assert result.seeds == SEEDS and result.diverged_epoch == [None] * 3
    for metric in engine.METRICS:
        expected = np.concatenate([c.history[metric] for c in chunks])
        assert np.array_equal(result.history[metric], expected, equal_nan=True), metric
    rounds = [(c, r) for c in chunks for r in range(len(c.seeds))]
    for r, (chunk, r_chunk) in enumerate(rounds):
        got, want = result.round_model(r).state_dict(), chunk.round_model(r_chunk).state_dict()
        assert got.keys() == want.keys()
        for key in got:
            assert torch.equal(got[key], want[key]), (r, key)


def test_parallel_ensembles_keep_their_members(one_thread):
    config = small_config(model="DigitCompare", ensemble=2, epochs=1)
    result = pool.train_rounds_parallel(config, SEEDS[:2], workers=2)
    alone = engine.train_rounds(config, SEEDS[1:2])
    for member in range(2):
        got, want = result.round_model(1, member).state_dict(), alone.round_model(0, member).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in got), member
    assert result.nb_parameters == alone.nb_parameters


def test_one_worker_or_one_seed_trains_in_this_process(monkeypatch):
    calls = []
    monkeypatch.setattr(pool, "worker_pool", lambda workers: calls.append(workers))
    config = small_config(epochs=1)
    for seeds, workers in (([3, 7], 1), ([3], 4)):
        result = pool.train_rounds_parallel(config, seeds, workers=workers)
        assert result.seeds == seeds and result.model is not None
    assert calls == []


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_a_bad_worker_count_is_refused(workers):
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        pool.train_rounds_parallel(small_config(), SEEDS, workers=workers)


def test_a_bad_config_is_refused_before_any_process_starts(monkeypatch):
    monkeypatch.setattr(pool, "worker_pool", lambda workers: pytest.fail("a pool was started"))
    with pytest.raises(ValueError, match="batch_size"):
        pool.train_rounds_parallel(small_config(batch_size=0), SEEDS, workers=2)
    with pytest.raises(ValueError, match="at least one seed"):
        pool.train_rounds_parallel(small_config(), [], workers=2)
