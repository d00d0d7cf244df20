"""The retrain panel (lib/widgets.py), driven as a user would: choose a model, set the controls, click Train.

Choosing a Model entry loads the setting of its committed result (every row of
`lib.experiments.summary`, checked here against the results files themselves); a click trains with
the panel's values in a background thread, moves the progress bar, redraws the curves and reports
the test accuracy, naming the values it trained with, beside the committed result; failed rounds
are flagged by lib.stats' rule. At most one training runs per process: a new panel, a Train in
another panel, Stop and Kernel > Interrupt stop it. Refusals and errors end as a message in the
panel.
"""
import json
import textwrap
import threading
import time

import numpy as np
import pytest

from lib import widgets
from lib.engine import METRICS, OPTIMIZERS, TrainConfig, train_rounds
from lib.experiments import PROJECT_ROOT, get_preset, summary
from lib.models import list_models
from lib.stats import pm
from lib.widgets import CONTROLLED, RECIPE, STYLE, RetrainPanel, active_panel

TIMEOUT = 300  # seconds; a tiny training takes a few seconds, more on a busy machine
COURSE = PROJECT_ROOT / "results" / "course"


def set_tiny(panel, **values):
    """Tiny values (100 pairs, 2 epochs, 2 rounds) unless overridden; the model first, since
    choosing it loads its setting into the other controls."""
    values = {"model": "NetWS", "optimizer": "SGD", "lr": 0.01, "epochs": 2, "batch_size": 20, "aux_weight": 0.5,
              "rounds": 2, "nb_train": 100, **values}
    for name, value in values.items():
        getattr(panel, name).value = value
    return values


@pytest.fixture
def panel(tmp_path):
    """A panel of the quick preset over an empty results folder: nothing committed."""
    return RetrainPanel(results_dir=tmp_path, preset="quick")


@pytest.fixture(autouse=True)
def no_training_left():
    """Every test ends with no training running in this process."""
    yield
    thread = widgets.stop_training("the test ended")
    if thread is not None:
        thread.join(TIMEOUT)
    assert active_panel() is None


def fake_training(epochs_seen=None, stop=None, fail=None, val=0.9, diverged=None):
    """A stand-in for train_rounds: calls on_epoch each epoch with constant numbers (final
    validation accuracy `val`, a number or one per round), returns a TrainResult; `stop` is called
    during epoch 1, `fail` is raised at once."""
    def train(config, seeds, on_epoch=None):
        R = len(seeds)
        history = {m: np.full((R, config.epochs), 0.8) for m in METRICS}
        history["val_acc"][:, -1] = val
        for epoch in range(1, config.epochs + 1):
            if fail:
                raise fail
            if stop is not None and epoch == 1:
                stop()  # as a click on Stop during the first epoch
            on_epoch(epoch, history)
            if epochs_seen is not None:
                epochs_seen.append(epoch)
        return widgets_result(config, seeds, history, diverged or [None] * R)

    return train


def widgets_result(config, seeds, history, diverged):
    from lib.engine import TrainResult

    return TrainResult(config=config, seeds=list(seeds), history=history, diverged_epoch=diverged, wall_time_s=0.0,
                       device="cpu", nb_parameters=1, model=None)


def endless_training(started, concurrent=None):
    """A stand-in for train_rounds that runs epochs until the panel stops it (sets `started` at
    its first epoch; `concurrent` counts the trainings running at once, and their maximum)."""
    def train(config, seeds, on_epoch=None):
        history = {m: np.full((len(seeds), 10_000), 0.6) for m in METRICS}
        if concurrent is not None:
            with concurrent["lock"]:
                concurrent["now"] += 1
                concurrent["max"] = max(concurrent["max"], concurrent["now"])
        try:
            for epoch in range(1, 10_001):
                on_epoch(epoch, history)  # raises once the panel is stopped
                started.set()
                time.sleep(0.02)
        finally:
            if concurrent is not None:
                with concurrent["lock"]:
                    concurrent["now"] -= 1
        raise AssertionError("the training was never stopped")

    return train


# ---------------------------------------------------------------------------------------------
# Controls and the committed settings
# ---------------------------------------------------------------------------------------------


def test_controls(panel):
    assert list(panel.model.options) == list_models()  # nothing committed: every registered model
    assert list(panel.optimizer.options) == list(OPTIMIZERS)
    assert (panel.lr.base, panel.lr.min, panel.lr.max) == (10, -4, -1)  # 1e-4 .. 1e-1, log scale
    assert (panel.rounds.min, panel.rounds.max) == (1, 20)
    assert (panel.nb_train.min, panel.nb_train.max) == (100, 1000)
    assert panel.epochs.value == get_preset("quick").epochs
    assert panel.nb_trainings == 0 and panel.last_result is None and not panel.running
    assert panel.image.format == "png" and panel.image.value[:8] == b"\x89PNG\r\n\x1a\n"  # drawn at once
    assert panel.widget.children  # the top-level box


def test_nothing_committed_is_said_in_one_sentence(panel):
    panel.model.value = "SimpleCNN"
    text = panel.message.value
    assert "Nothing is committed for SimpleCNN in the quick preset, so there is no result to compare with; " \
           "the controls hold the defaults." in text
    assert "committed result" not in text.lower() and panel.recipe.value == ""
    preset = get_preset("quick")
    assert (panel.optimizer.value, panel.lr.value) == (TrainConfig.optimizer, pytest.approx(TrainConfig.lr))
    assert (panel.epochs.value, panel.batch_size.value, panel.nb_train.value) == (
        preset.epochs, preset.batch_size, max(preset.nb_train, panel.nb_train.min))


def same(value, committed):
    """Equal, up to float rounding for numbers (a slider holds a float)."""
    if isinstance(committed, float):
        return value == pytest.approx(committed, rel=1e-9)
    return value == committed and type(value) is type(committed)


def committed_entry(label, row):
    """The committed entry of a summary row, read straight from the results file it names."""
    if "source" in row:  # the best model: a track's confirmation file (its tracks, NetWSAL beside) or best.json
        kind, table, name = row["source"]
        if "confirmation" in label:
            assert kind.startswith("confirmation") and (table == "tracks") == ("track" in row)
        return json.loads((COURSE / f"{kind}.json").read_text())[table][name], f"{kind}.json"
    seed_models = json.loads((COURSE / "seed_models.json").read_text())["models"]
    if label in seed_models:
        return seed_models[label], "seed_models.json"
    return json.loads((COURSE / "evaluation.json").read_text())["protocols"]["common"]["models"][label], \
        "evaluation.json"


@pytest.fixture(scope="module")
def course_panel():
    """A panel over the committed course results (read only)."""
    return RetrainPanel(preset="course")


def test_every_summary_row_is_a_model_entry(course_panel):
    rows = list(summary("course"))
    assert len(rows) >= 17  # 4 + 11 seed architectures + 2 tracks
    assert list(course_panel.model.options)[: len(rows)] == rows
    covered = {course_panel.committed[r].model for r in rows}
    assert set(list_models()) <= covered | set(course_panel.model.options)


@pytest.mark.parametrize("label", list(summary("course")))
def test_choosing_a_summary_row_loads_its_committed_setting(course_panel, label):
    """Every row of `python -m lib summary --preset course`: its committed config in the controls
    and in the config that Train would use, its result and curve beside."""
    row = summary("course")[label]
    entry, file_name = committed_entry(label, row)
    committed = entry["config"]
    panel = course_panel
    panel.model.value = next(m for m in panel.model.options if m != label)  # come from elsewhere
    panel.rounds.value = 1
    panel.model.value = label
    for name in CONTROLLED:
        assert same(getattr(panel, name).value, committed[name]), name
    assert (committed["optimizer"], committed["lr"]) == (row["optimizer"], row["lr"])
    config = panel.config()
    for name in ("model", *CONTROLLED, *RECIPE):
        assert same(getattr(config, name), committed[name]), name
    assert config.nb_val == committed["nb_val"] and config.nb_test == committed["nb_test"]
    assert panel.seeds() == entry["seeds"][:1]  # round r: the committed round r's data and weights
    # the result and the curve, for comparison
    text = panel.message.value
    assert f"Committed result of {label}, from results/course/{file_name}: test accuracy " \
           f"{pm(row['mean_acc'], row['std_acc'])} % over {row['n_rounds']} rounds" in text
    assert f"{committed['optimizer']} lr {committed['lr']:.3g}, {committed['epochs']} epochs, " \
           f"batch {committed['batch_size']}" in text
    assert f"results/course/{file_name}" in panel.recipe.value
    for key, value in committed["model_options"].items():
        assert f"{key}={value}" in panel.recipe.value
    if "curves" in entry:
        test_curves = entry["curves"]["test_acc"]
    else:  # the confirmation block's entries name their run files
        test_curves = [r for run in entry["runs"]
                       for r in json.loads((COURSE / "runs" / run).read_text())["history"]["test_acc"]]
    curves = np.array([[np.nan if v is None else v for v in r] for r in test_curves], float)
    finite = ~np.all(np.isnan(curves), axis=0)
    expected = 100 * np.nanmean(curves[:, finite], axis=0)
    assert np.allclose(panel.committed[label].curve[finite], expected)
    assert panel.progress.value == 0 and panel.progress.bar_style == ""


def test_model_change_and_refused_start_reset_the_progress_bar(tmp_path):
    panel = RetrainPanel(results_dir=tmp_path, preset="quick", train_fn=fake_training())
    set_tiny(panel)
    assert panel.train() and panel.wait(TIMEOUT)
    assert panel.progress.value == 2 and panel.progress.bar_style == "success"
    panel.model.value = "NetAL"
    assert (panel.progress.value, panel.progress.bar_style, panel.progress.description) == (0, "", "Epoch 0")
    assert panel.train() and panel.wait(TIMEOUT)
    assert panel.progress.bar_style == "success"
    panel.batch_size.value, panel.nb_train.value = 500, 100
    assert panel.train() is False
    assert (panel.progress.value, panel.progress.bar_style) == (0, "")


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


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
    assert panel.progress.value == panel.progress.max == 2
    assert panel.image.value != empty_curves
    acc = result.final("test_acc")
    text = panel.message.value
    # the result names the values it was trained with, whatever the controls show afterwards
    assert "NetWS, SGD lr 0.01, 2 epochs, batch 20, auxiliary weight 0.5, 100 training pairs, 2 rounds: " \
           f"test accuracy <b>{pm(acc.mean(), acc.std(ddof=1))} %</b>" in text
    assert "Nothing is committed for NetWS" in text
    assert panel.progress.bar_style == "success"
    assert not panel.button.disabled and panel.stop_button.disabled
    panel.lr.value = 0.05
    assert panel.message.value == text


def test_one_round_has_no_plus_minus(tmp_path):
    panel = RetrainPanel(results_dir=tmp_path, preset="quick", train_fn=fake_training())
    set_tiny(panel, rounds=1)
    assert panel.train() and panel.wait(TIMEOUT)
    assert "1 round: test accuracy <b>80.00 %</b> (mean over the rounds)" in panel.message.value
    assert "+-" not in panel.message.value


def test_failed_rounds_are_flagged_by_the_study_rule(tmp_path):
    """failure_reason on the final validation accuracies and the diverged flags: a round at chance
    never learned, a diverged round is named, and the mean of the other rounds is given."""
    val = np.array([0.5, 0.9, 0.9])
    panel = RetrainPanel(results_dir=tmp_path, preset="quick",
                         train_fn=fake_training(val=val, diverged=[None, None, 2]))
    set_tiny(panel, rounds=3)
    assert panel.train() and panel.wait(TIMEOUT)
    assert panel.last_failures == ["never learned", None, "diverged"]
    text = panel.message.value
    assert "2 of 3 rounds failed by the study's rule (on validation): round 1 never learned, round 3 diverged." \
           in text
    assert "The other rounds: 80.00 %." in text and STYLE["warning"] in text


def test_reproduces_the_committed_run(quick_study):
    """A committed setting trained for all its rounds gives the committed numbers again."""
    results, _, evaluation = quick_study
    panel = RetrainPanel(results_dir=results, preset="quick", model="NetWS")
    entry = evaluation["protocols"]["common"]["models"]["NetWS"]
    panel.rounds.value = len(entry["seeds"])
    assert panel.train() and panel.wait(TIMEOUT)
    assert panel.last_result.final("test_acc").tolist() == entry["test_acc"]
    assert f"test accuracy <b>{pm(entry['mean_acc'], entry['std_acc'])} %</b>" in panel.message.value


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
    assert panel.nb_trainings == 0 and panel.thread is None and panel.last_result is None
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


# ---------------------------------------------------------------------------------------------
# Stopping: at most one training per process
# ---------------------------------------------------------------------------------------------


def test_stop_ends_the_training_after_the_current_epoch(tmp_path):
    seen = []
    panel = RetrainPanel(results_dir=tmp_path, preset="quick")
    panel.train_fn = fake_training(epochs_seen=seen, stop=panel.stop)
    set_tiny(panel, epochs=5)
    assert panel.train() and panel.wait(TIMEOUT)
    assert seen == [] and panel.progress.value == 1  # stopped inside epoch 1's callback
    assert "Stopped after epoch 1/5 (you clicked Stop); no result kept." in panel.message.value
    assert panel.last_result is None and active_panel() is None


def test_stop_takes_effect_before_the_next_step(tmp_path):
    """With the real engine, a stop asked in the middle of an epoch ends the training at the next
    forward call, not at the end of the epoch."""
    calls = []
    panel = RetrainPanel(results_dir=tmp_path, preset="quick")

    def train(config, seeds, on_epoch=None):
        import torch

        def count(module, args):
            calls.append(module)
            if len(calls) == 5:  # a few layers into the first step
                panel.stop()

        handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
        try:
            return train_rounds(config, seeds, on_epoch=on_epoch)
        finally:
            handle.remove()

    panel.train_fn = train
    set_tiny(panel, rounds=1, batch_size=1, epochs=3)  # 300 steps
    assert panel.train() and panel.wait(TIMEOUT)
    assert len(calls) == 5  # the next forward call raised
    assert "Stopped after epoch 0/3" in panel.message.value and panel.last_result is None


def test_a_new_panel_stops_the_running_training(tmp_path):
    """Re-running the panel's cell (or Run All) makes a new panel: the old one's training stops."""
    started = threading.Event()
    old = RetrainPanel(results_dir=tmp_path, preset="quick", train_fn=endless_training(started))
    set_tiny(old)
    assert old.train() and started.wait(TIMEOUT)
    assert active_panel() is old
    new = RetrainPanel(results_dir=tmp_path, preset="quick")
    assert old.wait(TIMEOUT)
    assert "Stopped after epoch" in old.message.value and "a new panel was created" in old.message.value
    assert active_panel() is None and not new.running and new.nb_trainings == 0


def test_train_in_another_panel_stops_the_first(tmp_path):
    """Two panels never train at once: Train in the second stops the first, and its training
    starts once the first has ended."""
    started = threading.Event()
    counts = {"lock": threading.Lock(), "now": 0, "max": 0}
    first = RetrainPanel(results_dir=tmp_path, preset="quick", train_fn=endless_training(started, counts))
    second = RetrainPanel(results_dir=tmp_path, preset="quick", train_fn=fake_training())
    set_tiny(first), set_tiny(second)
    assert first.train() and started.wait(TIMEOUT)
    assert second.train()
    assert first.wait(TIMEOUT) and second.wait(TIMEOUT)
    assert "a training was started in another panel" in first.message.value
    assert "test accuracy" in second.message.value and counts["max"] == 1
    assert active_panel() is None


def test_interrupt_handler_stops_the_training(tmp_path):
    started = threading.Event()
    panel = RetrainPanel(results_dir=tmp_path, preset="quick", train_fn=endless_training(started))
    set_tiny(panel)
    assert panel.train() and started.wait(TIMEOUT)
    widgets.on_interrupt(2, None)  # what SIGINT calls in a kernel that routes it (route_interrupts)
    assert panel.wait(TIMEOUT)
    assert "(Kernel > Interrupt); no result kept." in panel.message.value


def test_kernel_interrupt_stops_the_training_in_a_real_kernel(tmp_path):
    """In an IPython kernel, Kernel > Interrupt (SIGINT) while no cell runs stops the training."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(PROJECT_ROOT))
    try:
        def run(code):
            out = []
            reply = kc.execute_interactive(textwrap.dedent(code), timeout=TIMEOUT, output_hook=lambda m: out.append(
                m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
            assert reply["content"]["status"] == "ok", reply["content"]
            return "".join(out)

        run(f"""
            import time
            from lib.widgets import RetrainPanel
            panel = RetrainPanel(results_dir={str(tmp_path)!r}, preset="quick", model="NetWS")
            panel.epochs.value, panel.rounds.value, panel.nb_train.value, panel.batch_size.value = 100, 1, 100, 1
            assert panel.train()
            while panel.progress.value < 1 and panel.running:
                time.sleep(0.05)
            """)
        km.interrupt_kernel()  # the kernel is idle: the training thread runs on
        time.sleep(1)
        printed = run("print(panel.wait(60), panel.progress.value); print(panel.message.value)")
        assert printed.startswith("True ") and int(printed.split()[1]) < 100
        assert "(Kernel > Interrupt); no result kept." in printed
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
