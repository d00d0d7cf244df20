"""lib.engine: R rounds trained together equal each round trained alone, and the plain loop.

The reference tests (timm's test_models, micrograd against PyTorch): for every registered model
and the test-only BNDropoutNet (conftest.py), `train_rounds(cfg, seeds)` gives round r the weights
and history of `train_rounds(cfg, [seeds[r]])`, and, dropout off, of `lib.baseline.train_plain`.
Then every optimizer, divergence, history layout, the result object, config validation, what
`stack_models` refuses, `round_model`, the global RNG and `pair_loss`.

Float rounding and how the comparisons stay exact: stacked and alone runs use other kernels
(grouped or not), so their float32 results differ by an ulp. That is harmless until a max-pool
window holds two values one ulp apart (seen: AuxNet1, seed 11, step 2): the argmax flips, the
gradient goes to another pixel and the weights part by 1e-3. Adam does the same to a gradient
that is float noise (a unit that fires for one pair, a bias before a batch norm). So the
multi-epoch comparisons run in float64 (`float64` fixture: models and data in double precision),
with plain SGD, where every difference is a real one: the runs agree to 1e-16 and are held to
1e-9; SGD also shows a loss scaled by R, which Adam's scale invariance would hide. The float32
path the study runs is checked on one training step of every model, where rounding has nothing
to amplify yet, and over all optimizers on one model.

Runs are tiny (32 training pairs, 2 epochs, one CPU thread) and memoised within this module
(`run`), so the tests of one model share their trainings; much of their time is the CPU kernels'
one-off set-up for each new shape. They train on the CPU, or on `LIB_TEST_DEVICE` (conftest.py):
benchmarks/gpu_check.sh runs them on a GPU with LIB_TEST_DEVICE=cuda.
"""
import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TEST_DEVICE
from lib import baseline, data, engine, models

pytestmark = pytest.mark.usefixtures("single_thread")

SEEDS = [3, 7, 11]  # round r uses SEEDS[r]
F64_ATOL = 1e-9  # float64: stacked, alone and plain agree to about 1e-16
F32_ATOL = 1e-6  # float32, one step: about 3e-8 seen; batch norm's backward, which subtracts batch
F32_BATCH_NORM_ATOL = 2e-5  # means, takes models with batch norm to about 2e-6 (weights move by 0.1)
# DigitCompare: batch norm then ReLU then max-pool on 14x14 maps, where float32 rounding flips which
# pixel wins a pooling window now and then, and the gradient goes to another pixel: up to 4e-4 seen
# after one step (weights move by 0.1). The float64 comparisons above hold it to 1e-9.
F32_ATOL_OVERRIDES = {"DigitCompare": 6e-4}
BUILD_MODEL = engine.build_model  # the engine's own, whatever a test patches in


def tiny_config(model, **overrides):
    """2 epochs of SGD on the CPU (or LIB_TEST_DEVICE), 32 training pairs in batches of 16, 16 val and
    16 test pairs: one batch shape throughout, as each new shape costs the CPU kernels a one-off
    set-up. Partial batches: see the optimizer tests."""
    options = dict(model=model, optimizer="SGD", lr=0.1, nb_train=32, nb_val=16, nb_test=16, batch_size=16,
                   epochs=2, device=TEST_DEVICE)
    return engine.TrainConfig(**{**options, **overrides})


def f32_atol(model_name):
    if model_name in F32_ATOL_OVERRIDES:
        return F32_ATOL_OVERRIDES[model_name]
    with_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in BUILD_MODEL(model_name, 0).modules())
    return F32_BATCH_NORM_ATOL if with_norm else F32_ATOL


def has_dropout(model):
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


_runs = {}


def run(config, seeds):
    """`train_rounds(config, seeds)`, memoised: several tests ask for the same run. Every actual run
    also checks that training leaves torch's global RNG state as it found it."""
    dropout_off = getattr(engine.build_model, "without_dropout", False)
    dropout_off = dropout_off and has_dropout(BUILD_MODEL(config.model, 0, **config.model_options))
    key = (json.dumps(config.to_dict(), sort_keys=True), tuple(seeds), dropout_off, torch.get_default_dtype())
    if key not in _runs:
        before = torch.get_rng_state()
        _runs[key] = engine.train_rounds(config, seeds)
        assert torch.equal(torch.get_rng_state(), before), "train_rounds changed the global RNG state"
    return _runs[key]


def assert_same_weights(state, expected, atol):
    """Same keys, shapes and dtypes; values within atol (batch-norm step counts: equal)."""
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert state[key].shape == value.shape and state[key].dtype == value.dtype, key
        if key.endswith("num_batches_tracked"):
            assert state[key].item() == value.item(), key
        else:
            assert torch.allclose(state[key].cpu(), value.cpu(), rtol=0, atol=atol), \
                f"{key}: max difference {(state[key].cpu() - value.cpu()).abs().max().item():.3g}"


def assert_trained(state, model_name, seed, at_least=1e-3):
    """The weights moved away from their initialisation by far more than the tolerance, so that
    matching weights says something about training."""
    initial = BUILD_MODEL(model_name, seed).state_dict()
    moved = max((state[k].cpu() - v.to(state[k].dtype)).abs().max().item()
                for k, v in initial.items() if v.is_floating_point())
    assert moved > at_least, f"the weights moved by {moved:.3g} only"


def nb_pairs(config, metric):
    return {"train": config.nb_train, "val": config.nb_val, "test": config.nb_test}[metric.split("_")[0]]


def assert_same_history(history, r, expected, r_expected, config, metrics=engine.METRICS, loss_rtol=1e-9):
    """Round r of `history` equals round r_expected of `expected`: losses within `loss_rtol`;
    accuracies exactly or one pair apart (a prediction at a near tie may flip under rounding; one
    pair is still far below the spread between rounds). NaN at the same epochs."""
    for metric in metrics:
        got, want = history[metric][r], expected[metric][r_expected]
        assert got.shape == want.shape, metric
        assert np.array_equal(np.isnan(got), np.isnan(want)), f"{metric}: NaN at other epochs: {got} vs {want}"
        if metric == "train_loss":
            assert np.allclose(got, want, rtol=loss_rtol, atol=0, equal_nan=True), f"{metric}: {got} vs {want}"
        else:
            one_pair = 1 / nb_pairs(config, metric) + 1e-9
            assert np.nanmax(np.abs(got - want), initial=0) <= one_pair, f"{metric}: {got} vs {want}"


@pytest.fixture
def float64(monkeypatch):
    """Train in double precision: models are built under the float64 default dtype, and the engine's
    and the plain loop's normalised pairs are converted to float64."""
    def normalize64(*sets):
        return tuple(data.PairSet(s.input.double(), s.target, s.classes) for s in data.normalize(*sets))

    monkeypatch.setattr(engine, "normalize", normalize64)
    monkeypatch.setattr(baseline, "normalize", normalize64)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def no_dropout(monkeypatch):
    """Build every model with its dropout probabilities at 0, in the engine and the plain loop: the
    two draw their masks from different generators, everything else must agree."""
    build = engine.build_model

    def build_without_dropout(name, seed, **options):
        model = build(name, seed, **options)
        for module in model.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.p = 0.0
        return model

    build_without_dropout.without_dropout = True  # a key of `run`'s memo
    monkeypatch.setattr(engine, "build_model", build_without_dropout)
    monkeypatch.setattr(baseline, "build_model", build_without_dropout)


# ----------------------------------------------------------------------------- the reference tests


def test_rounds_trained_together_equal_rounds_trained_alone(model_name, float64):
    config = tiny_config(model_name)
    together = run(config, SEEDS)
    assert together.nb_parameters == models.count_parameters(models.create_model(model_name))
    assert together.diverged_epoch == [None] * len(SEEDS)
    for r, seed in enumerate(SEEDS):
        alone = run(config, [seed])
        state = engine.round_state_dict(together.model, r)
        assert state[next(iter(state))].dtype == torch.float64
        assert_trained(state, model_name, seed)
        assert_same_weights(state, engine.round_state_dict(alone.model, 0), F64_ATOL)
        assert_same_history(together.history, r, alone.history, 0, config)
    # the rounds really are different runs (own data, init, order)
    assert not np.array_equal(together.history["train_loss"][0], together.history["train_loss"][1])


def test_rounds_trained_together_equal_the_plain_loop(model_name, float64, no_dropout):
    config = tiny_config(model_name)
    together = run(config, SEEDS)
    r, seed = 1, SEEDS[1]
    plain, history = baseline.train_plain(config, seed)
    assert not has_dropout(plain)
    assert_same_weights(engine.round_state_dict(together.model, r), plain.state_dict(), F64_ATOL)
    assert_same_history(together.history, r, {m: history[m][None] for m in history if m != "wall_time_s"},
                        0, config, metrics=("train_loss", "train_acc", "val_acc", "test_acc"))


def test_one_float32_step_of_stacked_rounds_equals_one_step_alone(model_name):
    """The study's float32 path (on the CPU: channels-last grouped convolutions), one SGD step on 16
    pairs, then evaluation."""
    config = tiny_config(model_name, nb_train=16, epochs=1)
    together = run(config, SEEDS)
    for r, seed in enumerate(SEEDS):
        alone = run(config, [seed])
        state = engine.round_state_dict(together.model, r)
        assert state[next(iter(state))].dtype == torch.float32
        assert_trained(state, model_name, seed, at_least=100 * f32_atol(model_name))
        assert_same_weights(state, engine.round_state_dict(alone.model, 0), f32_atol(model_name))
        assert_same_history(together.history, r, alone.history, 0, config, loss_rtol=1e-5)


def test_the_fixtures_really_remove_dropout_and_use_float64(bn_dropout_model, float64, no_dropout):
    assert has_dropout(BUILD_MODEL(bn_dropout_model, 0))
    model = engine.build_model(bn_dropout_model, 0)
    assert not has_dropout(model) and next(model.parameters()).dtype == torch.float64
    train, val, test = engine.prepare_rounds(tiny_config(bn_dropout_model), SEEDS[:1])
    assert train[0].dtype == val[0].dtype == test[0].dtype == torch.float64


LEARNING_RATES = {"SGD": 0.1, "Adam": 1e-3, "Adadelta": 1.0, "Adagrad": 1e-2, "RMSprop": 1e-3}


@pytest.mark.parametrize("optimizer", list(engine.OPTIMIZERS))
def test_every_optimizer_trains_stacked_rounds_like_separate_ones(optimizer):
    """NetWSAL, float32, 1 epoch: stacked equals alone, and equals the plain loop with torch's
    default optimizer (not the engine's fused / foreach variant): the stacked step is the per-round
    step. 40 pairs in batches of 16: the last batch (8) is partial. Adaptive optimizers amplify
    float noise (see the module docstring): tolerance 1e-4."""
    config = tiny_config("NetWSAL", optimizer=optimizer, lr=LEARNING_RATES.get(optimizer, 1e-3), epochs=1,
                         nb_train=40)
    together = run(config, SEEDS[:2])
    alone = run(config, [SEEDS[1]])
    state = engine.round_state_dict(together.model, 1)
    assert_trained(state, "NetWSAL", SEEDS[1], at_least=2e-3)
    assert_same_weights(state, engine.round_state_dict(alone.model, 0), atol=1e-4)
    assert_same_history(together.history, 1, alone.history, 0, config, loss_rtol=1e-5)
    plain, history = baseline.train_plain(config, SEEDS[1], library_optimizer=True)
    assert_same_weights(state, plain.state_dict(), atol=1e-4)
    assert np.allclose(together.history["train_loss"][1], history["train_loss"], rtol=1e-5)


def test_the_auxiliary_loss_changes_training_and_weight_zero_removes_it():
    """NetWSAL with aux_weight=0 trains exactly like NetWS (same layers, same init); with
    aux_weight=1 it does not."""
    plain_ws = run(tiny_config("NetWS"), SEEDS[:1])
    without_aux = run(tiny_config("NetWSAL", aux_weight=0.0), SEEDS[:1])
    with_aux = run(tiny_config("NetWSAL", aux_weight=1.0), SEEDS[:1])
    ws_state = engine.round_state_dict(plain_ws.model, 0)
    assert_same_weights(engine.round_state_dict(without_aux.model, 0), ws_state, F32_ATOL)
    assert np.allclose(without_aux.history["train_loss"], plain_ws.history["train_loss"], rtol=1e-6)
    with pytest.raises(AssertionError):
        assert_same_weights(engine.round_state_dict(with_aux.model, 0), ws_state, 1e-3)
    assert np.all(with_aux.history["train_loss"] > without_aux.history["train_loss"])  # + two digit CEs


# ----------------------------------------------------------------------------- divergence


def poisoned_rounds(config, seeds, r, value):
    """Data of `seeds` with one pair of round r's training input set to `value`."""
    (x_train, t_train, c_train), val, test = engine.prepare_rounds(config, seeds)
    x_train = x_train.clone()  # (N, R, 2, 14, 14)
    x_train[5, r] = value
    return (x_train, t_train, c_train), val, test


def assert_round_1_diverged_alone(config, value, atol):
    """Round 1 of SEEDS, given a pair of `value`, is flagged at epoch 1 and NaN from there on;
    rounds 0 and 2 train as they do alone."""
    result = engine.train_rounds(config, SEEDS, rounds_data=poisoned_rounds(config, SEEDS, 1, value))
    assert result.diverged_epoch == [None, 1, None]
    for metric, values in result.history.items():
        assert np.isnan(values[1]).all(), metric
    for r in (0, 2):
        alone = run(config, [SEEDS[r]])
        assert_same_weights(engine.round_state_dict(result.model, r), engine.round_state_dict(alone.model, 0), atol)
        assert_same_history(result.history, r, alone.history, 0, config, loss_rtol=1e-5)
    json.dumps(result.to_dict(), allow_nan=False)


def test_a_diverging_round_is_flagged_and_leaves_the_others_alone(model_name, float64):
    assert_round_1_diverged_alone(tiny_config(model_name), math.nan, F64_ATOL)


def test_a_round_diverging_later_keeps_its_history_until_then(float64):
    """Round 1's data are poisoned after epoch 1 (through `on_epoch`, in place: the engine trains on
    the tensors it is given), so it diverges at epoch 2: epoch 1 stays recorded, the rest is NaN."""
    config = tiny_config("NetWSAL", epochs=3)
    rounds_data = engine.prepare_rounds(config, SEEDS, device=engine.resolve_device(config.device))
    x_train = rounds_data[0][0]  # (N, R, 2, 14, 14)

    def poison_after_epoch_1(epoch, history):
        if epoch == 1:
            x_train[5, 1] = math.nan

    result = engine.train_rounds(config, SEEDS, rounds_data=rounds_data, on_epoch=poison_after_epoch_1)
    assert result.diverged_epoch == [None, 2, None]
    for metric in ("train_loss", "train_acc", "val_acc", "test_acc", "val_digit_acc", "test_digit_acc"):
        values = result.history[metric][1]
        assert np.isfinite(values[0]) and np.isnan(values[1:]).all(), f"{metric}: {values}"
    for r in (0, 2):
        alone = run(config, [SEEDS[r]])
        assert_same_weights(engine.round_state_dict(result.model, r), engine.round_state_dict(alone.model, 0), F64_ATOL)
        assert_same_history(result.history, r, alone.history, 0, config)


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
def test_an_infinite_input_diverges_too(optimizer):
    config = tiny_config("NetWSAL", optimizer=optimizer, lr=LEARNING_RATES[optimizer], nb_train=16, epochs=1)
    assert_round_1_diverged_alone(config, math.inf, 1e-4)


@pytest.mark.parametrize("optimizer", ["Adam", "SGD", "RMSprop"])
def test_a_rate_far_too_high_is_flagged_under_every_optimizer(optimizer):
    """lr=1e3: SGD's loss goes to NaN; Adam's and RMSprop's stay finite (1e18 to 1e32, measured) at
    chance accuracy. All are flagged, and their numbers are NaN from the flagged epoch on."""
    config = tiny_config("NetWSAL", optimizer=optimizer, lr=1e3, epochs=2)
    result = engine.train_rounds(config, SEEDS[:2])
    assert result.diverged_epoch == [1, 1], result.diverged_epoch
    for metric, values in result.history.items():
        assert np.isnan(values).all(), metric
    assert np.isnan(result.final("val_acc")).all()


def test_a_healthy_run_is_not_flagged_and_the_threshold_is_relative_to_chance():
    assert engine.chance_loss(False, 1.0) == pytest.approx(math.log(2))
    assert engine.chance_loss(True, 0.5) == pytest.approx(math.log(2) + math.log(10))
    chance = engine.chance_loss(True, 1.0)
    losses = torch.tensor([0.3, chance, 999 * chance, 1001 * chance, math.inf, math.nan])
    assert engine.diverging(losses, chance).tolist() == [False, False, False, True, True, True]
    assert run(tiny_config("NetWSAL"), SEEDS).diverged_epoch == [None] * len(SEEDS)


def test_the_progress_bar_shows_validation_only_where_measured():
    nan = np.nan
    history = {"train_loss": np.array([[0.5, 0.4], [0.7, nan]]), "val_acc": np.array([[nan, 0.8], [nan, nan]])}
    assert engine.progress_postfix(history, 0) == {"loss": "0.600"}
    assert engine.progress_postfix(history, 1, nb_diverged=1) == {"loss": "0.400", "val": "0.800", "diverged": 1}


# ----------------------------------------------------------------------------- history and result


def test_history_layout_and_eval_every():
    config = tiny_config("NetWSAL", epochs=3, eval_every=2)
    result = run(config, SEEDS[:2])
    assert set(result.history) == set(engine.METRICS)
    for metric, values in result.history.items():
        assert values.shape == (2, 3), metric
    for metric in ("train_loss", "train_acc"):
        assert np.isfinite(result.history[metric]).all()
    for metric in ("val_acc", "test_acc", "val_digit_acc", "test_digit_acc"):
        values = result.history[metric]
        assert np.isnan(values[:, 0]).all(), f"{metric} at a non-evaluated epoch"
        assert np.isfinite(values[:, 1:]).all() and (values[:, 1:] >= 0).all() and (values[:, 1:] <= 1).all()
    assert result.diverged_epoch == [None, None]
    assert np.array_equal(result.final("val_acc"), result.history["val_acc"][:, 2])
    assert result.seeds == SEEDS[:2] and result.device == str(engine.resolve_device(TEST_DEVICE))
    assert result.config is config


def test_history_of_a_model_without_digits_and_without_validation():
    config = tiny_config("NetWS", nb_val=0, epochs=1)
    result = run(config, SEEDS[:1])
    for metric in ("val_acc", "val_digit_acc", "test_digit_acc"):
        assert np.isnan(result.history[metric]).all(), metric
    assert np.isfinite(result.history["test_acc"]).all()
    assert np.isnan(result.final("val_acc")).all()


def hand_result(history, diverged_epoch):
    return engine.TrainResult(config=tiny_config("NetWS"), seeds=[0, 1], history=history,
                              diverged_epoch=diverged_epoch, wall_time_s=0.5, device="cpu", nb_parameters=10)


def test_final_takes_the_last_evaluated_epoch():
    nan = np.nan
    result = hand_result({"val_acc": np.array([[nan, 0.5, nan], [nan, 0.6, nan]]),
                          "test_acc": np.array([[nan, 0.5, 0.7], [nan, nan, nan]])}, [None, 2])
    assert np.array_equal(result.final("val_acc"), [0.5, 0.6])
    assert np.array_equal(result.final("test_acc"), [0.7, nan], equal_nan=True)


def test_to_dict_is_json_with_none_for_nan():
    nan = np.nan
    history = {"val_acc": np.array([[nan, 0.5], [0.25, nan]]), "train_loss": np.array([[1.0, 0.5], [2.0, nan]])}
    result = hand_result(history, [None, 2])
    result.model = nn.Linear(1, 1)  # not serialised
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert d["history"] == {"val_acc": [[None, 0.5], [0.25, None]], "train_loss": [[1.0, 0.5], [2.0, None]]}
    assert d["diverged_epoch"] == [None, 2] and d["seeds"] == [0, 1] and d["nb_parameters"] == 10
    assert d["config"] == tiny_config("NetWS").to_dict()
    assert "model" not in d


def test_to_dict_of_a_real_run_is_json():
    result = run(tiny_config("NetWSAL", epochs=3, eval_every=2), SEEDS[:2])
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert d["history"]["val_acc"][0][0] is None
    assert d["history"]["val_acc"][1][1] == pytest.approx(result.history["val_acc"][1, 1])
    assert engine.TrainConfig(**d["config"]) == result.config


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides, field", [
    ({"model": "Nope"}, "model"),
    ({"optimizer": "Lion"}, "optimizer"),
    ({"lr": 0}, "lr"),
    ({"lr": -1e-3}, "lr"),
    ({"lr": math.nan}, "lr"),
    ({"lr": math.inf}, "lr"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"epochs": 0}, "epochs"),
    ({"nb_train": 0}, "nb_train"),
    ({"nb_val": -1}, "nb_val"),
    ({"nb_test": -1}, "nb_test"),
    ({"eval_every": 0}, "eval_every"),
    ({"aux_weight": -0.5}, "aux_weight"),
    ({"aux_weight": math.nan}, "aux_weight"),
    ({"device": "not-a-device"}, "device"),
])
def test_validate_names_the_bad_field(overrides, field):
    config = tiny_config(**{"model": "NetWSAL", **overrides})
    with pytest.raises(ValueError, match=field):
        config.validate()
    with pytest.raises(ValueError, match=field):  # train_rounds validates before any work
        engine.train_rounds(config, SEEDS[:1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_validate_refuses_cuda_without_cuda():
    with pytest.raises(ValueError, match="device"):
        tiny_config("NetWSAL", device="cuda").validate()


def test_validate_accepts_the_defaults_and_returns_the_config():
    config = engine.TrainConfig()
    assert config.validate() is config


def test_train_rounds_needs_a_seed():
    with pytest.raises(ValueError, match="seed"):
        engine.train_rounds(tiny_config("NetWSAL"), [])


# ----------------------------------------------------------------------------- stacking


class Gain(nn.Module):
    """A leaf module holding a parameter directly."""

    def __init__(self, dim):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gain


class ScaledLinear(nn.Module):
    """A module with a child AND a parameter of its own."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.linear(x) * self.scale


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = ScaledLinear()


@pytest.mark.parametrize("make, named", [
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), "LayerNorm"),
    (lambda: nn.Sequential(nn.Embedding(10, 4)), "Embedding"),
    (lambda: nn.Sequential(nn.Linear(4, 4), Gain(4)), "Gain"),
    (lambda: ScaledLinear(), "ScaledLinear"),
    (lambda: Wrapper(), "block"),
    (lambda: nn.Sequential(nn.Conv1d(1, 2, 3)), "Conv1d"),
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")), "Conv2d"),
    (lambda: nn.Sequential(nn.BatchNorm2d(2, momentum=None)), "BatchNorm"),
    (lambda: nn.Sequential(nn.AlphaDropout(0.5)), "AlphaDropout"),
])
def test_stack_models_refuses_layers_it_cannot_stack(make, named):
    with pytest.raises(TypeError, match=named):
        engine.stack_models([make(), make()])


class Holder(nn.Module):
    """A container that is not an nn.Sequential: its layer runs with the plain (B*R, ...) layout."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


STACKABLE = {  # name -> (a layer stack, the input shape of one round's batch of 6)
    "conv groups stride padding": (lambda: nn.Sequential(
        nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2), nn.BatchNorm2d(6), nn.ReLU(),
        nn.MaxPool2d(2, padding=1), nn.Conv2d(6, 3, 2, bias=False), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(3, 5)), (4, 9, 9)),  # 9 -> 5 -> 3 -> 2 -> 1
    "conv dilation, outside a Sequential": (lambda: Holder(nn.Conv2d(2, 3, 3, padding=2, dilation=2)), (2, 7, 7)),
    "batch norm 2d outside a Sequential": (lambda: Holder(nn.BatchNorm2d(2)), (2, 3, 3)),
    "linear on 3-d input": (lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2, bias=False)), (3, 4)),
    "batch norm 1d on 3-d input": (lambda: Holder(nn.BatchNorm1d(3)), (3, 5)),
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("layers", list(STACKABLE))
def test_stacked_layers_compute_each_round_on_its_own(layers, mode):
    """R = 3 copies, (B*R, ...) sample-major layout: round r's slice of the stacked output (and its
    batch-norm running statistics) equal the plain copy r on round r's inputs."""
    make, shape = STACKABLE[layers]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        plain = [make() for _ in range(3)]
        x = torch.randn(6, 3, *shape)  # (B, R, ...)
        for m in plain:  # non-trivial batch-norm affine parameters and running statistics
            for bn in (b for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)):
                for t in (bn.weight, bn.bias, bn.running_mean):
                    t.data.uniform_(-1, 1)
                bn.running_var.data.uniform_(0.5, 2)
    stacked = engine.stack_models(plain).train(mode == "train")
    with torch.no_grad():
        y = stacked(x.flatten(0, 1))  # (B*R, ...)
        y = y.view(6, 3, *y.shape[1:])
        for r, m in enumerate(plain):
            assert torch.allclose(y[:, r], m.train(mode == "train")(x[:, r]), atol=1e-5), f"round {r}"
            assert_same_weights(engine.round_state_dict(stacked, r), m.state_dict(), atol=1e-6)


def test_a_stacked_linear_refuses_a_wrong_input_size_like_nn_linear():
    stacked = engine.stack_models([nn.Sequential(nn.Linear(3, 5)) for _ in range(3)])
    with pytest.raises(RuntimeError):
        nn.Linear(3, 5)(torch.randn(2, 12))
    with pytest.raises(RuntimeError):
        stacked(torch.randn(2 * 3, 12))


def test_evaluate_does_not_depend_on_the_chunk_size():
    result = run(tiny_config("NetWSAL", nb_train=16, epochs=1), SEEDS)
    _, (x, t, c), _ = engine.prepare_rounds(result.config, SEEDS, device=engine.resolve_device(TEST_DEVICE))
    whole = engine.evaluate(result.model, x, t, c, len(SEEDS))
    chunked = engine.evaluate(result.model, x, t, c, len(SEEDS), pairs_per_call=7)  # chunks of 2 pairs
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])
    assert np.array_equal(whole[0].cpu().numpy(), result.history["val_acc"][:, -1].astype(np.float32))
    assert result.model.training  # evaluate restores the mode


def test_round_state_dict_has_the_plain_model_keys_and_shapes(model_name):
    plain = [engine.build_model(model_name, s) for s in SEEDS[:2]]
    stacked = engine.stack_models(plain)
    for r in range(2):
        state = engine.round_state_dict(stacked, r)
        assert_same_weights(state, plain[r].state_dict(), atol=0)
        assert all(state[k].data_ptr() != v.data_ptr() for k, v in stacked.state_dict().items() if v.dim())


def test_stacked_sequentials_are_built_not_retyped(model_name):
    """Every plain Sequential of the model becomes a StackedSequential built from the same children,
    under the same name; the models given to stack_models keep their own classes."""
    plain = [engine.build_model(model_name, s) for s in SEEDS[:2]]
    classes = {name: type(m) for name, m in plain[0].named_modules()}
    stacked = engine.stack_models(plain)
    assert {name: type(m) for name, m in plain[0].named_modules()} == classes
    for name, module in stacked.named_modules():
        if isinstance(module, nn.Sequential) and classes[name].forward is nn.Sequential.forward:
            assert type(module) is engine.StackedSequential and module.nb_rounds == 2, name
            original = plain[0].get_submodule(name)
            assert [n for n, _ in module.named_children()] == [n for n, _ in original.named_children()]
    root = engine.stack_models([nn.Sequential(nn.Linear(3, 4), nn.ReLU()) for _ in range(3)])
    assert type(root) is engine.StackedSequential and root.nb_rounds == 3
    assert list(root.state_dict()) == ["0.weight", "0.bias"]


def test_round_model_answers_like_its_round_of_the_stacked_model(model_name):
    result = run(tiny_config(model_name, nb_train=16, epochs=1), SEEDS)  # float32, as the study runs
    R = len(SEEDS)
    x = torch.randn(8, R, 2, 14, 14, generator=torch.Generator().manual_seed(0))  # (N, R, 2, 14, 14)
    stacked = result.model.eval()
    try:
        with torch.no_grad():
            comparison, digits = stacked(x.flatten(0, 1).to(engine.resolve_device(TEST_DEVICE)))  # (N*R, 2), ...
    finally:
        stacked.train()
    comparison, digits = comparison.cpu(), None if digits is None else digits.cpu()  # round_model is on the CPU
    for r in range(R):
        plain = result.round_model(r)
        assert isinstance(plain, models.get_model_class(model_name)) and not plain.training
        assert not any(type(m).__module__ == engine.__name__ for m in plain.modules())
        with torch.no_grad():
            plain_comparison, plain_digits = plain(x[:, r])
        assert torch.allclose(comparison.view(8, R, 2)[:, r], plain_comparison, atol=1e-5)
        assert (digits is None) == (plain_digits is None)
        if digits is not None:
            assert torch.allclose(digits.view(8, R, 2, 10)[:, r], plain_digits, atol=1e-5)


def test_train_rounds_leaves_the_global_rng_alone(bn_dropout_model):
    """Dropout masks, shuffling, initialisation draw from private generators. (`run` checks this on
    every training of this module too, so on every model.)"""
    before = torch.get_rng_state()
    engine.train_rounds(tiny_config(bn_dropout_model, nb_train=16, epochs=1), SEEDS[:2])
    assert torch.equal(torch.get_rng_state(), before)


# ----------------------------------------------------------------------------- dropout


def stacked_dropout(layer, nb_rounds=2):
    """A stacked model of `nb_rounds` copies of nn.Sequential(layer), in training mode."""
    stacked = engine.stack_models([nn.Sequential(copy.deepcopy(layer)) for _ in range(nb_rounds)])
    for module in stacked.modules():
        if isinstance(module, engine.StackedDropout):
            module.generators = [torch.Generator().manual_seed(engine.subseed(s, "dropout")) for s in range(nb_rounds)]
    return stacked.train()


def test_stacked_dropout_keeps_or_drops_each_value():
    y = stacked_dropout(nn.Dropout(0.5))(torch.ones(200 * 2, 3, 4))  # (B*R, 3, 4)
    assert set(y.unique().tolist()) == {0.0, 2.0}  # kept values scaled by 1 / (1 - p)
    assert 0.4 < (y == 0).float().mean().item() < 0.6
    assert not torch.equal(y[0::2], y[1::2])  # each round its own masks
    assert torch.equal(stacked_dropout(nn.Dropout(0.5)).eval()(torch.ones(4, 3)), torch.ones(4, 3))


def test_stacked_dropout2d_drops_whole_channels():
    y = stacked_dropout(nn.Dropout2d(0.5))(torch.ones(50 * 2, 6, 5, 5))  # (B*R, C, H, W)
    maps = y.flatten(2)  # (B*R, C, H*W)
    assert set(maps.unique().tolist()) == {0.0, 2.0}
    assert (maps == maps[..., :1]).all(), "a channel is partly dropped"


# ----------------------------------------------------------------------------- pair_loss


def random_outputs(n, generator):
    comparison = torch.randn(n, 2, generator=generator)  # (n, 2)
    digits = torch.randn(n, 2, 10, generator=generator)  # (n, 2, 10)
    classes = torch.randint(10, (n, 2), generator=generator)  # (n, 2)
    return comparison, digits, (classes[:, 0] <= classes[:, 1]).long(), classes


def test_pair_loss_without_digits_ignores_aux_weight():
    comparison, _, target, classes = random_outputs(12, torch.Generator().manual_seed(0))
    losses = [engine.pair_loss(comparison, None, target, classes, w, nb_rounds=2) for w in (0.0, 1.0, 5.0)]
    assert all(torch.equal(losses[0], loss) for loss in losses)
    assert torch.allclose(losses[0].mean(), F.cross_entropy(comparison, target))


@pytest.mark.parametrize("aux_weight", [0.0, 0.5, 2.0])
def test_pair_loss_per_round_equals_a_manual_computation(aux_weight):
    """Two rounds in the sample-major layout: round r owns rows r, r + 2, r + 4, ..."""
    R = 2
    comparison, digits, target, classes = random_outputs(6 * R, torch.Generator().manual_seed(1))
    losses = engine.pair_loss(comparison, digits, target, classes, aux_weight, nb_rounds=R)
    assert losses.shape == (R,)
    for r in range(R):
        rows = slice(r, None, R)
        expected = (F.cross_entropy(comparison[rows], target[rows])
                    + aux_weight * (F.cross_entropy(digits[rows, 0], classes[rows, 0])
                                    + F.cross_entropy(digits[rows, 1], classes[rows, 1])))
        assert torch.allclose(losses[r], expected, atol=1e-6)
