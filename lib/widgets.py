"""The retrain panel: train R rounds of any committed setting from the notebook, and watch it learn.

    from lib.widgets import RetrainPanel
    panel = RetrainPanel(preset="course")
    panel.widget                      # display it (the last expression of a cell)
    panel.model.value = "ConvNetBase" # loads its committed setting into the controls
    panel.train(); panel.wait(600)    # what the Train button does, then wait for the end (tests)
    panel.last_result                 # the lib.engine.TrainResult of the last finished training

The Model list holds every row of `lib.experiments.summary` (the four 002 models, the seed
reports' architectures, the best model's two tracks), then the registered models nothing is
committed for. Choosing one loads the setting its committed result was trained with
(`committed_settings`): optimizer, learning rate, epochs, batch size, auxiliary weight and training
pairs into the controls, and its model options and recipe (augmentation, schedule, ...) as a fixed
part of the run; the committed result and its mean test curve are shown beside for comparison.

Train runs `lib.engine.train_rounds` in a background thread, so the kernel stays responsive. Every
epoch moves the progress bar and redraws the learning curves (a PNG in an `ipywidgets.Image`:
setting a widget value is safe from any thread, unlike printing into an Output widget). Round r
uses the seed `eval_seed + r` of the preset: the data and starting weights of the committed
evaluation's round r, so like is compared with like, and a committed setting trained for all its
rounds gives the committed numbers again. Validation and test pairs are only displayed, never used
to decide anything; failed rounds are flagged by the study's rule (`lib.stats.failure_reason`).

At most one training runs per kernel (process): a new panel (the cell run again, Run All) or a
Train in another panel stops the running one, and so do Stop and, in an IPython kernel,
Kernel > Interrupt while no cell runs. A stop takes effect before the next training step. A second
Train while one runs, values that cannot train and an error during training are reported in the
panel, never as a traceback.
"""
import copy
import io
import signal
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import ipywidgets as w
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lib.engine import OPTIMIZERS, TrainConfig, train_rounds
from lib.experiments import PROJECT_ROOT, ResultsError, get_preset, history, preset_dir, read_json, summary
from lib.models import list_models
from lib.plots import PlainLogFormatter
from lib.stats import failure_reason, mean_std, nan_array, pm

MAX_ROUNDS = 20
NB_TRAIN_RANGE = (100, 1000)  # training pairs per round: min, max (step 100)
LR_EXPONENTS = (-4, -1)  # learning-rate slider: 1e-4 .. 1e-1
CONTROLLED = ("optimizer", "lr", "epochs", "batch_size", "aux_weight", "nb_train")  # fields with a control
RECIPE = ("model_options", "shift", "rotate", "scale", "repair", "label_smoothing", "weight_decay", "lr_schedule",
          "ensemble", "tta")  # fields a committed setting fixes without a control
COLORS = {"train": "#7f7f7f", "val": "#1f77b4", "test": "#d62728", "committed": "black"}
STYLE = {"info": "#333333", "ok": "#1a7f37", "warning": "#9a6700", "error": "#cf222e"}
FONT = "font-family: var(--jp-ui-font-family, sans-serif); font-size: 13px"  # the notebook's, also in exported HTML


# ---------------------------------------------------------------------------------------------
# The committed settings
# ---------------------------------------------------------------------------------------------


@dataclass
class Committed:
    """One row of `lib.experiments.summary`, with the setting its runs were trained with."""

    model: str  # the registered model
    config: dict  # the TrainConfig fields of the committed runs
    row: dict  # the summary row (mean_acc, std_acc, n_rounds, ...)
    curve: np.ndarray  # (epochs,) mean test accuracy (%) per epoch, NaN where it was not measured
    source: str  # the results file, relative to the project

    @property
    def recipe(self):
        """The fields of the setting that have no control (model options, augmentation, ...)."""
        return {k: self.config[k] for k in RECIPE if k in self.config}


def committed_settings(preset="course", results_dir=None):
    """{row name: Committed} for every row of `summary(preset, results_dir)`, in its order; {} when the
    preset has no committed evaluation. The setting and the curve come from the entry of the row's
    study (`Study.entries`: the file that holds the row)."""
    from lib import studies

    try:
        rows = summary(preset, results_dir)
        entries = {name: e for study in studies.STUDIES if study.entries
                   for name, e in study.entries(preset, results_dir).items()}
    except (ResultsError, FileNotFoundError):
        return {}
    folder = preset_dir(preset, results_dir)
    out = {}
    for name, row in rows.items():
        if name not in entries:
            continue  # a row whose file does not hold it: nothing to load
        found, path = entries[name]
        path = Path(path).resolve()
        # an entry holds its curves, or names its run files (a confirmation's)
        records = [found] if "curves" in found else [read_json(folder / "runs" / run) for run in found["runs"]]
        values = nan_array([row for record in records for row in history(record, "test_acc")])
        with warnings.catch_warnings():  # an epoch measured in no round (eval_every > 1) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            curve = 100 * np.nanmean(values, axis=0) if values.size else np.full(0, np.nan)
        config = {f.name: found["config"][f.name] for f in fields(TrainConfig) if f.name in found["config"]}
        out[name] = Committed(model=config["model"], config=config, row=row, curve=curve,
                              source=str(path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path))
    return out


# ---------------------------------------------------------------------------------------------
# One training per process
# ---------------------------------------------------------------------------------------------

_LOCK = threading.Lock()  # guards _ACTIVE and every panel's start/end of a training
_ACTIVE = None  # the panel whose training runs in this process, or None
_PREVIOUS_SIGINT = signal.SIG_IGN  # the kernel's idle SIGINT handler before ours
_ROUTED = False  # True once Kernel > Interrupt stops the training (route_interrupts)


def active_panel():
    """The panel whose training is running in this process, or None."""
    return _ACTIVE


def stop_training(reason="stopped"):
    """Ask the training running in this process (any panel) to stop before its next step; returns
    its thread (join it to wait for the end), or None if nothing runs."""
    panel = _ACTIVE  # one read: the panel may end its training meanwhile, then stop() does nothing
    if panel is None:
        return None
    panel.stop(reason)
    return panel.thread


def on_interrupt(signum, frame):
    """The kernel's SIGINT handler while no cell runs (set by `route_interrupts`): Kernel > Interrupt
    stops the training, or, with none running, goes to the kernel's own handler."""
    if _ACTIVE is not None:
        _ACTIVE.stop("Kernel > Interrupt")  # sets an event only: safe inside a signal handler
    elif callable(_PREVIOUS_SIGINT):
        _PREVIOUS_SIGINT(signum, frame)


def route_interrupts():
    """In an IPython kernel, make Kernel > Interrupt stop the panel's training. True if routed.

    The kernel ignores SIGINT while idle and installs Python's default handler around each message
    it handles (ipykernel's pre/post_handler_hook), restoring `kernel.saved_sigint_handler` after:
    putting `on_interrupt` there makes an interrupt while idle stop the training, while an interrupt
    during a cell still interrupts the cell. Must run in the kernel's main thread (a cell, a click)."""
    global _PREVIOUS_SIGINT, _ROUTED
    from IPython import get_ipython  # installed with ipywidgets

    kernel = getattr(get_ipython(), "kernel", None)
    if not hasattr(kernel, "saved_sigint_handler") or threading.current_thread() is not threading.main_thread():
        return False
    if kernel.saved_sigint_handler is not on_interrupt:
        _PREVIOUS_SIGINT = kernel.saved_sigint_handler
        kernel.saved_sigint_handler = on_interrupt
    _ROUTED = True
    return True


class _Stopped(Exception):
    """Raised inside the training thread once a stop was asked for."""


# ---------------------------------------------------------------------------------------------
# The panel
# ---------------------------------------------------------------------------------------------


def _pm(values):
    """'94.70 ± 0.74' over the finite values; one value has no ± part; None if there are none."""
    mean, std = mean_std(values)
    return None if mean is None else pm(mean, std if np.isfinite(values).sum() > 1 else None)


def _rounds(n):
    return f"{n} round" + ("s" if n != 1 else "")


def _recipe_text(recipe):
    """The fields of a recipe that differ from TrainConfig's defaults, as 'key=value' items."""
    defaults = TrainConfig()
    items = [f"{k}={v}" for k, v in recipe.get("model_options", {}).items()]
    items += [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in recipe.items()
              if k != "model_options" and v != getattr(defaults, k)]
    return ", ".join(items)


def setting_text(config):
    """The values a TrainConfig (or its dict) trains with, in words."""
    c = config if isinstance(config, dict) else config.to_dict()
    text = (f"{c['optimizer']} lr {c['lr']:.3g}, {c['epochs']} epochs, batch {c['batch_size']}, "
            f"auxiliary weight {c['aux_weight']:g}, {c['nb_train']} training pairs")
    recipe = _recipe_text({k: c[k] for k in RECIPE if k in c})
    return text + (f"; {recipe}" if recipe else "")


class RetrainPanel:
    """Controls, a Train/Stop button pair, a progress bar, a message line and the learning curves.

    `preset` sets the default values (epochs, pair counts, seeds) and where the committed results
    are read from (`results_dir`, default the project's results/). `train_fn` is the training call
    (default `lib.engine.train_rounds`; tests replace it).
    """

    def __init__(self, results_dir=None, preset="course", model="NetWSAL", train_fn=None):
        stop_training("a new panel was created (its cell ran again)")
        route_interrupts()
        self.preset = get_preset(preset)
        self.results_dir = results_dir
        self.train_fn = train_fn or train_rounds
        self.last_result = None  # TrainResult of the last finished training
        self.last_failures = None  # failure_reason of its rounds
        self.last_error = None  # traceback text of the last failed training
        self.nb_trainings = 0  # trainings started
        self.running = False  # a training of this panel runs (from Train until its thread ends)
        self.thread = None  # the thread of its last training
        self._stop = threading.Event()
        self._stop_reason = None
        self._idle_images = {}  # Model entry -> PNG of its committed curve alone
        self.committed = committed_settings(self.preset, results_dir)

        p = self.preset
        covered = {c.model for c in self.committed.values()}
        labels = list(self.committed) + [m for m in list_models() if m not in covered]
        label = {"style": {"description_width": "120px"}, "layout": w.Layout(width="380px")}
        self.model = w.Dropdown(options=labels, value=model if model in labels else labels[0], description="Model",
                                **label)
        self.optimizer = w.Dropdown(options=list(OPTIMIZERS), value="Adam", description="Optimizer", **label)
        self.lr = w.FloatLogSlider(value=1e-3, base=10, min=LR_EXPONENTS[0], max=LR_EXPONENTS[1], step=0.1,
                                   readout_format=".1e", description="Learning rate", **label)
        self.epochs = w.IntSlider(value=p.epochs, min=1, max=100, description="Epochs", **label)
        self.batch_size = w.IntSlider(value=p.batch_size, min=1, max=NB_TRAIN_RANGE[1], description="Batch size",
                                      **label)
        self.aux_weight = w.FloatSlider(value=p.aux_weight, min=0, max=5, step=0.1, description="Auxiliary weight",
                                        **label)
        self.rounds = w.IntSlider(value=3, min=1, max=MAX_ROUNDS, description="Rounds", **label)
        self.nb_train = w.IntSlider(value=NB_TRAIN_RANGE[1], min=NB_TRAIN_RANGE[0], max=NB_TRAIN_RANGE[1], step=100,
                                    description="Training pairs", **label)
        self.recipe = w.HTML()
        self.button = w.Button(description="Train", button_style="primary", tooltip="train with these values")
        self.stop_button = w.Button(description="Stop", disabled=True, tooltip="stop before the next training step")
        self.progress = w.IntProgress(value=0, min=0, max=self.epochs.value, description="Epoch 0",
                                      style={"description_width": "80px"}, layout=w.Layout(width="420px"))
        self.message = w.HTML()
        self.image = w.Image(format="png")

        self.button.on_click(lambda _: self.train())
        self.stop_button.on_click(lambda _: self.stop("you clicked Stop"))
        self.model.observe(lambda change: self.load(change["new"]), names="value")
        controls = w.HBox([w.VBox([self.model, self.optimizer, self.lr, self.epochs]),
                           w.VBox([self.batch_size, self.aux_weight, self.rounds, self.nb_train])])
        title = w.HTML(f'<div style="{FONT}"><b>Retrain a model</b> ({p.name} preset: {p.nb_val} validation and '
                       f'{p.nb_test} test pairs per round; round r uses seed {p.eval_seed} + r, the data of the '
                       'committed evaluation)</div>')
        self.widget = w.VBox([title, controls, self.recipe, w.HBox([self.button, self.stop_button, self.progress]),
                              self.message, self.image])
        self.load(self.model.value)

    # ------------------------------------------------------------------------------ values

    def load(self, label):
        """Put the committed setting of `label` (a Model entry) into the controls, or the preset's
        defaults when nothing is committed; show its committed result unless a training runs."""
        committed = self.committed.get(label)
        defaults = TrainConfig()
        values = committed.config if committed else vars(self.preset.config(label, defaults.optimizer, defaults.lr))
        for name in CONTROLLED:
            getattr(self, name).value = values[name]  # a slider clamps a value outside its range
        recipe = _recipe_text(committed.recipe) if committed else ""
        self.recipe.value = (f'<div style="{FONT}">Fixed by the committed setting ({committed.source}): '
                             f'{recipe or "the model as registered, no augmentation or schedule"}.</div>'
                             if committed else "")
        if not self.running:
            self._reset_progress()
            self._say(f"{self.committed_text(label)} Set the rounds (and any value) and click Train.")
            if label not in self._idle_images:  # drawing takes a moment: once per entry
                self._idle_images[label] = self._draw(None, None, 0, label)
            self.image.value = self._idle_images[label]

    def config(self):
        """The TrainConfig of the current values; ValueError (with the reason) if they cannot train."""
        committed = self.committed.get(self.model.value)
        recipe = copy.deepcopy(committed.recipe) if committed else {}
        config = self.preset.config(committed.model if committed else self.model.value, self.optimizer.value,
                                    float(self.lr.value), batch_size=int(self.batch_size.value),
                                    epochs=int(self.epochs.value), aux_weight=float(self.aux_weight.value),
                                    nb_train=int(self.nb_train.value), device="auto", **recipe)
        config.validate()
        if config.batch_size > config.nb_train:
            raise ValueError(f"the batch size ({config.batch_size}) is larger than the number of training pairs "
                             f"({config.nb_train}); lower it or add training pairs")
        return config

    def seeds(self):
        """Round r uses the seed of the chosen row's committed round r (the confirmation block's rows
        have their own seeds), so a retrained round meets the same data and weights."""
        committed = self.committed.get(self.model.value)
        first = committed.row["seeds"][0] if committed is not None and committed.row.get("seeds") else self.preset.eval_seed
        return [first + r for r in range(int(self.rounds.value))]

    # ------------------------------------------------------------------------------ actions

    def train(self):
        """Start a training with the current values in a background thread (what Train does), after
        stopping any other panel's. Returns True if it started; False, with the reason in the panel,
        if it was refused."""
        global _ACTIVE
        route_interrupts()
        with _LOCK:
            if self.running:
                self._say("A training is already running: wait for it to end (or click Stop). "
                          "This click was ignored.", "warning", keep=True)
                return False
            try:
                config = self.config()
            except ValueError as error:
                self._reset_progress()
                self._say(f"Not started: {error}.", "error")
                return False
            previous = stop_training("a training was started in another panel")
            _ACTIVE = self
            self.running = True
            self.nb_trainings += 1
            self._stop.clear()
            self._stop_reason = None
            self.button.disabled = True
            self.stop_button.disabled = False
            self._reset_progress(config.epochs)
            seeds = self.seeds()
            self._say(f"Preparing {_rounds(len(seeds))} of {self.model.value}...", "info")
            self.thread = threading.Thread(target=self._run, args=(self.model.value, config, seeds, previous),
                                            daemon=True, name="retrain-panel")
            self.thread.start()
            return True

    def stop(self, reason="you clicked Stop"):
        """Ask the running training to stop before its next training step."""
        if self.running and not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    def wait(self, timeout=None):
        """Join the training thread (if any); True when no training is running afterwards."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.running

    # ------------------------------------------------------------------------------ the thread

    def _run(self, label, config, seeds, previous):
        global _ACTIVE

        def check(*_):  # a global forward pre-hook: every step of this thread starts with a forward
            if self._stop.is_set() and threading.current_thread() is self.thread:
                raise _Stopped()

        hook = torch.nn.modules.module.register_module_forward_pre_hook(check)
        try:
            if previous is not None and previous.is_alive():
                self._say("Waiting for the previous training to stop...", "info")
                previous.join()
            check()
            start = time.perf_counter()
            how = "Stop or Kernel > Interrupt ends it" if _ROUTED else "Stop ends it"

            def on_epoch(epoch, history):
                self.progress.value = epoch
                self.progress.description = f"Epoch {epoch}"
                val = _pm(history["val_acc"][:, epoch - 1])
                self._say(f"Training {label} ({_rounds(len(seeds))}, {setting_text(config)}): epoch "
                          f"{epoch}/{config.epochs}" + (f", validation accuracy {val} %" if val else "")
                          + f". {how}.", "info")
                self.image.value = self._draw(config, history, epoch, label)
                check()

            result = self.train_fn(config, seeds, on_epoch=on_epoch)
            self.last_result = result
            self.last_failures = failure_reason(result.final("val_acc"), result.diverged_epoch)
            failed = any(self.last_failures)
            self.progress.bar_style = "success"  # it ran to the end; failed rounds are named in the message
            self._say(self._result_text(label, result, time.perf_counter() - start), "warning" if failed else "ok")
        except _Stopped:
            self.progress.bar_style = "warning"
            self._say(f"Stopped after epoch {self.progress.value}/{config.epochs} ({self._stop_reason}); "
                      "no result kept.", "warning")
        except Exception as error:  # shown in the panel: the thread has no one else to tell
            self.last_error = traceback.format_exc()
            self.progress.bar_style = "danger"
            self._say(f"Training failed: {type(error).__name__}: {error}", "error")
        finally:
            hook.remove()
            with _LOCK:
                if _ACTIVE is self:
                    _ACTIVE = None
                self.running = False
                self.button.disabled = False
                self.stop_button.disabled = True

    # ------------------------------------------------------------------------------ display

    def _say(self, text, kind="info", keep=False):
        """Show one message; `keep` appends it under the current one (a refusal while training)."""
        line = f'<div style="color:{STYLE[kind]}; {FONT}">{text}</div>'
        if keep and self.message.value:
            line = self.message.value.split("</div>")[0] + "</div>" + line
        self.message.value = line

    def _reset_progress(self, epochs=None):
        self.progress.max = epochs or self.epochs.value
        self.progress.value, self.progress.description, self.progress.bar_style = 0, "Epoch 0", ""

    def committed_text(self, label):
        """One sentence on the committed result of a Model entry, or on its absence."""
        committed = self.committed.get(label)
        if committed is None:
            return (f"Nothing is committed for {label} in the {self.preset.name} preset, so there is no result to "
                    "compare with; the controls hold the defaults.")
        row = committed.row
        acc = pm(row["mean_acc"], row["std_acc"] if row["n_rounds"] > 1 else None)
        return (f"Committed result of {label}, from {committed.source}: test accuracy {acc} % over "
                f"{_rounds(row['n_rounds'])}, trained with {setting_text(committed.config)}.")

    def _result_text(self, label, result, seconds):
        test = result.final("test_acc")
        failures = self.last_failures
        text = f"{label}, {setting_text(result.config)}, {_rounds(len(result.seeds))}: "
        acc = _pm(test)
        text += (f"test accuracy <b>{acc} %</b> (mean" + (" +- std" if np.isfinite(test).sum() > 1 else "")
                 + " over the rounds)" if acc else "every round diverged, no test accuracy")
        text += f", in {seconds:.0f} s."
        failed = [f"round {r + 1} {why}" for r, why in enumerate(failures) if why]
        if failed:
            healthy = _pm(test[[why is None for why in failures]])
            text += (f"<br>{len(failed)} of {len(failures)} rounds failed by the study's rule (on validation): "
                     + ", ".join(failed) + "." + (f" The other rounds: {healthy} %." if healthy else ""))
        return text + "<br>" + self.committed_text(label)

    def _draw(self, config, history, epoch, label):
        """PNG bytes: training loss and accuracies (mean over rounds, +- std bands) up to `epoch`,
        with the committed mean test accuracy of `label` dashed; before any training, that
        committed curve alone."""
        fig = Figure(figsize=(8.4, 2.9), dpi=90, layout="constrained")
        ax_loss, ax_acc = fig.subplots(1, 2)
        committed = self.committed.get(label)
        curve = committed.curve if committed is not None else np.full(0, np.nan)
        keep = np.isfinite(curve)
        if keep.any():
            ax_acc.plot(np.arange(1, curve.size + 1)[keep], curve[keep], "--", color=COLORS["committed"], linewidth=1,
                        marker="." if keep.sum() < curve.size else None, label="committed, test (mean)")
        if history is not None and epoch > 0:
            x = np.arange(1, epoch + 1)
            with warnings.catch_warnings(), np.errstate(all="ignore"):  # NaN: not measured, or diverged
                warnings.simplefilter("ignore", RuntimeWarning)
                loss = np.nanmean(history["train_loss"][:, :epoch], axis=0)
                ax_loss.plot(x, loss, color=COLORS["train"], marker="o" if epoch < 3 else None, markersize=3)
                for split in ("train", "val", "test"):
                    values = 100 * history[f"{split}_acc"][:, :epoch]
                    keep = ~np.all(np.isnan(values), axis=0)
                    mean, std = np.nanmean(values[:, keep], axis=0), np.nanstd(values[:, keep], axis=0)
                    ax_acc.plot(x[keep], mean, color=COLORS[split], label=f"{split} (mean)",
                                marker="o" if epoch < 3 else None, markersize=3)
                    if split != "train" and values.shape[0] > 1:
                        ax_acc.fill_between(x[keep], mean - std, mean + std, color=COLORS[split], alpha=0.15,
                                            linewidth=0)
            if np.any(np.isfinite(loss) & (loss > 0)):
                ax_loss.set_yscale("log")
                ax_loss.yaxis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))  # 0.2, not 2e-01
                ax_loss.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))
            nb_epochs = config.epochs
            title = f"{label}, {config.optimizer} lr {config.lr:.3g}: epoch {epoch}/{nb_epochs}"
        else:
            nb_epochs = curve.size or self.epochs.value
            ax_loss.text(0.5, 0.5, "click Train", ha="center", va="center", transform=ax_loss.transAxes,
                         color="0.5")
            ax_loss.set_yticks([])
            title = f"{label}: " + ("committed result (dashed)" if committed is not None else "nothing committed")
        for ax, name in ((ax_loss, "Training loss"), (ax_acc, "Accuracy (%)")):
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("Epoch", fontsize=8)
            ax.set_xlim(0.5, max(nb_epochs, 1) + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(which="both", labelsize=8)
            ax.grid(True, linewidth=0.5, alpha=0.4)
        if ax_acc.lines:
            ax_acc.legend(fontsize=7, loc="best")
        fig.suptitle(title, fontsize=9)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
