"""The retrain panel (lib/widgets.py), driven as a user would: set the controls, click Train.

A click trains with the panel's values in a background thread, moves the progress bar, redraws
the curves and reports the test accuracy beside the committed result; a second click while one
runs, values that cannot train and an error during training end as a message in the panel.
"""
import threading

import numpy as np
import pytest

from lib import widgets
from lib.engine import METRICS, OPTIMIZERS, train_rounds
from lib.experiments import get_preset, write_json_atomic
from lib.models import list_models
from lib.widgets import RetrainPanel

TIMEOUT = 300  # seconds; a tiny training takes a few seconds, more on a busy machine


def set_tiny(panel, **values):
    """Tiny values (100 pairs, 2 epochs, 2 rounds) unless overridden."""
    values = {"model": "NetWS", "optimizer": "SGD", "lr": 0.01, "epochs": 2, "batch_size": 20, "aux_weight": 0.5,
              "rounds": 2, "nb_train": 100, **values}
    for name, value in values.items():
        getattr(panel, name).value = value
    return values


@pytest.fixture
def panel(tmp_path):
    """A panel of the quick preset over an empty results folder: no committed result."""
    return RetrainPanel(results_dir=tmp_path, preset="quick")


def fake_training(epochs_seen=None, stop=None, fail=None):
    """A stand-in for train_rounds: calls on_epoch each epoch with constant numbers; `stop` is called
    during epoch 1, `fail` is raised at once."""
    def train(config, seeds, on_epoch=None):
        history = {m: np.full((len(seeds), config.epochs), 0.6) for m in METRICS}
        for epoch in range(1, config.epochs + 1):
            if fail:
                raise fail
            if stop is not None and epoch == 1:
                stop()  # as a click on Stop during the first epoch
            on_epoch(epoch, history)
            if epochs_seen is not None:
                epochs_seen.append(epoch)
        raise AssertionError("the panel should have stopped the training")

    return train


def test_controls(panel):
    assert list(panel.model.options) == list_models()
    assert list(panel.optimizer.options) == list(OPTIMIZERS)
    assert (panel.lr.base, panel.lr.min, panel.lr.max) == (10, -4, -1)  # 1e-4 .. 1e-1, log scale
    assert (panel.rounds.min, panel.rounds.max) == (1, 20)
    assert (panel.nb_train.min, panel.nb_train.max) == (100, 1000)
    assert panel.epochs.value == get_preset("quick").epochs
    assert panel.nb_trainings == 0 and panel.last_result is None and not panel.running
    assert panel.image.format == "png" and panel.image.value[:8] == b"\x89PNG\r\n\x1a\n"  # drawn at once
    assert "no committed result" in panel.message.value
    assert panel.widget.children  # the top-level box


def test_train_click_runs_with_the_panel_values(panel):
    values = set_tiny(panel)
    empty_curves = panel.image.value
    panel.button.click()
    assert panel.wait(TIMEOUT)
    result = panel.last_result
    assert result is not None and panel.nb_trainings == 1
    config = result.config
    assert (config.model, config.optimizer, config.epochs, config.batch_size, config.nb_train) == (
        values["model"], values["optimizer"], values["epochs"], values["batch_size"], values["nb_train"])
    assert config.lr == pytest.approx(values["lr"]) and config.aux_weight == pytest.approx(values["aux_weight"])
    preset = get_preset("quick")
    assert (config.nb_val, config.nb_test, config.device) == (preset.nb_val, preset.nb_test, "auto")
    assert result.seeds == [preset.eval_seed, preset.eval_seed + 1]  # the committed evaluation's rounds
    assert result.history["test_acc"].shape == (2, 2)
    assert panel.progress.value == panel.progress.max == 2 and panel.progress.bar_style == "success"
    assert panel.image.value != empty_curves
    acc = result.final("test_acc")
    assert "test accuracy" in panel.message.value
    assert f"{100 * acc.mean():.1f} ± {100 * acc.std(ddof=1):.1f} %" in panel.message.value
    assert "no committed result" in panel.message.value
    assert not panel.button.disabled and panel.stop_button.disabled


def test_second_click_while_training_is_refused(tmp_path):
    release = threading.Event()
    calls = []

    def slow(config, seeds, on_epoch=None):
        calls.append(config)
        assert release.wait(TIMEOUT)
        return train_rounds(config, seeds, on_epoch=on_epoch)

    panel = RetrainPanel(results_dir=tmp_path, preset="quick", train_fn=slow)
    set_tiny(panel, epochs=1, rounds=1)
    assert panel.train()
    assert panel.running and panel.button.disabled  # the button is greyed out while it trains
    panel.epochs.value = 3
    assert panel.train() is False  # as a click arriving anyway
    panel.button.click()
    assert "already running" in panel.message.value
    release.set()
    assert panel.wait(TIMEOUT)
    assert len(calls) == 1 and panel.nb_trainings == 1
    assert panel.last_result.config.epochs == 1  # the first run was not disturbed
    assert panel.progress.value == panel.progress.max == 1
    assert "test accuracy" in panel.message.value and not panel.button.disabled


@pytest.mark.parametrize("batch_size", [101, 1000])
def test_batch_larger_than_training_set_is_refused(panel, batch_size):
    set_tiny(panel, nb_train=100, batch_size=batch_size)
    assert panel.train() is False
    panel.button.click()
    assert "batch size" in panel.message.value and "Not started" in panel.message.value
    assert panel.nb_trainings == 0 and panel._thread is None and panel.last_result is None
    assert not panel.button.disabled


def test_values_the_config_refuses_are_reported(panel, monkeypatch):
    def refuse(self):
        raise ValueError("lr must be a positive number, got 0")

    monkeypatch.setattr(widgets.TrainConfig, "validate", refuse)
    assert panel.train() is False
    assert "lr must be a positive number" in panel.message.value and panel.nb_trainings == 0


def test_error_during_training_is_shown(tmp_path):
    panel = RetrainPanel(results_dir=tmp_path, preset="quick", train_fn=fake_training(fail=RuntimeError("boom")))
    set_tiny(panel)
    assert panel.train()
    assert panel.wait(TIMEOUT)
    assert "Training failed" in panel.message.value and "RuntimeError: boom" in panel.message.value
    assert panel.last_result is None and "boom" in panel.last_error
    assert panel.progress.bar_style == "danger" and not panel.button.disabled
    panel.train_fn = fake_training(fail=RuntimeError("boom again"))
    assert panel.train() and panel.wait(TIMEOUT)  # the panel is usable after a failure
    assert "boom again" in panel.message.value


def test_stop_ends_the_training_after_the_current_epoch(tmp_path):
    seen = []
    panel = RetrainPanel(results_dir=tmp_path, preset="quick")
    panel.train_fn = fake_training(epochs_seen=seen, stop=panel.stop)
    set_tiny(panel, epochs=5)
    assert panel.train() and panel.wait(TIMEOUT)
    assert seen == [] and panel.progress.value == 1  # stopped inside epoch 1's callback
    assert "Stopped after epoch 1/5" in panel.message.value and panel.last_result is None


def test_committed_result_is_shown_beside(tmp_path):
    """With an evaluation file for the preset, the panel quotes its 20-round numbers for the model."""
    write_json_atomic(tmp_path / "quick" / "evaluation.json", fake_evaluation(["NetWS", "NetWSAL"]))
    panel = RetrainPanel(results_dir=tmp_path, preset="quick", model="NetWS")
    assert "committed 20-round result for NetWS: 91.0 ± 2.0 %" in panel.message.value
    assert (panel.optimizer.value, panel.lr.value) == ("RMSprop", pytest.approx(0.005))  # the study's setting
    panel.model.value = "NetBase"
    assert "no committed result for NetBase" in panel.message.value
    set_tiny(panel, model="NetWS", epochs=1, rounds=1)
    assert panel.train() and panel.wait(TIMEOUT)
    assert "test accuracy" in panel.message.value and "91.0 ± 2.0 %" in panel.message.value


def fake_evaluation(models, rounds=20, epochs=3):
    """An evaluation file in the structure lib.experiments writes, as far as the panel reads it."""
    entry = {"optimizer": "RMSprop", "lr": 0.005, "mean_acc": 0.91, "std_acc": 0.02, "mean_err": 0.09, "std_err": 0.02,
             "n_rounds": rounds, "diverged_rounds": 0, "nb_parameters": 1,
             "curves": {"test_acc": [[0.5 + 0.1 * e for e in range(epochs)]] * rounds}}
    table = {m: dict(entry) for m in models}
    return {"kind": "evaluation", "preset": {"name": "quick", "epochs": epochs, "nb_train": 100},
            "protocols": {"common": {"models": table, "comparisons": []},
                          "per_model": {"models": table, "comparisons": []}}}
