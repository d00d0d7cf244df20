"""The retrain panel: train R rounds of any registered model from the notebook, and watch it learn.

    from lib.widgets import RetrainPanel
    panel = RetrainPanel(preset="course")
    panel.widget                      # display it (the last expression of a cell)
    panel.train(); panel.wait(600)    # what the Train button does, then wait for the end (tests)
    panel.last_result                 # the lib.engine.TrainResult of the last finished training

The controls make one `lib.engine.TrainConfig`; Train runs `lib.engine.train_rounds` on it in a
background thread, so the kernel stays responsive. Every epoch moves the progress bar and redraws
the learning curves (a PNG in an `ipywidgets.Image`: setting a widget value is safe from any
thread, unlike printing into an Output widget). At the end the panel shows the test accuracy,
mean +- std over the rounds, beside the committed evaluation of the same model
(`lib.experiments.summary`), when there is one.

Round r uses the seed `eval_seed + r` of the preset: the data and starting weights of the
committed evaluation's round r, so like is compared with like. Validation and test pairs are
only displayed, never used to decide anything. A second Train while one runs, a bad combination
of values (anything `TrainConfig.validate` refuses, or a batch larger than the training set) and
an error during training are reported in the panel, never as a traceback.
"""
import io
import threading
import time
import traceback

import ipywidgets as w
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lib.engine import OPTIMIZERS, TrainConfig, train_rounds
from lib.experiments import ResultsError, get_preset, load_evaluation, load_grid, summary
from lib.models import list_models
from lib.plots import _PlainLogFormatter

MAX_ROUNDS = 20
NB_TRAIN_RANGE = (100, 1000)  # training pairs per round: min, max (step 100)
LR_EXPONENTS = (-4, -1)  # learning-rate slider: 1e-4 .. 1e-1
COLORS = {"train": "#7f7f7f", "val": "#1f77b4", "test": "#d62728", "committed": "black"}
STYLE = {"info": "#333333", "ok": "#1a7f37", "warning": "#9a6700", "error": "#cf222e"}
FONT = "font-family: var(--jp-ui-font-family, sans-serif); font-size: 13px"  # the notebook's, also in exported HTML


class _Stopped(Exception):
    """Raised from the epoch callback when Stop was clicked."""


def _pct(x):
    return f"{100 * x:.1f}"


def _mean_std(values):
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


class RetrainPanel:
    """Controls, a Train/Stop button pair, a progress bar, a message line and the learning curves.

    `preset` sets the default values (epochs, pair counts, seeds) and where the committed result
    is read from (`results_dir`, default the project's results/). `train_fn` is the training call
    (default `lib.engine.train_rounds`; tests replace it).
    """

    def __init__(self, results_dir=None, preset="course", model="NetWSAL", train_fn=None):
        self.preset = get_preset(preset)
        self.results_dir = results_dir
        self.train_fn = train_fn or train_rounds
        self.last_result = None  # TrainResult of the last finished training
        self.last_error = None  # traceback text of the last failed training
        self.nb_trainings = 0  # trainings started
        self._lock = threading.Lock()
        self._busy = False
        self._thread = None
        self._stop = threading.Event()
        self._committed = self._read_committed()

        p = self.preset
        names = list_models()
        start = self._committed_setting(model) or {"optimizer": "Adam", "lr": 1e-3}
        label = {"style": {"description_width": "120px"}, "layout": w.Layout(width="380px")}
        self.model = w.Dropdown(options=names, value=model if model in names else names[0], description="Model",
                                **label)
        self.optimizer = w.Dropdown(options=list(OPTIMIZERS), value=start["optimizer"], description="Optimizer",
                                    **label)
        self.lr = w.FloatLogSlider(value=start["lr"], base=10, min=LR_EXPONENTS[0], max=LR_EXPONENTS[1], step=0.1,
                                   readout_format=".1e", description="Learning rate", **label)
        self.epochs = w.IntSlider(value=p.epochs, min=1, max=100, description="Epochs", **label)
        self.batch_size = w.IntSlider(value=p.batch_size, min=1, max=NB_TRAIN_RANGE[1], description="Batch size",
                                      **label)
        self.aux_weight = w.FloatSlider(value=p.aux_weight, min=0, max=5, step=0.1, description="Auxiliary weight",
                                        **label)
        self.rounds = w.IntSlider(value=3, min=1, max=MAX_ROUNDS, description="Rounds", **label)
        self.nb_train = w.IntSlider(value=min(max(p.nb_train, NB_TRAIN_RANGE[0]), NB_TRAIN_RANGE[1]),
                                    min=NB_TRAIN_RANGE[0], max=NB_TRAIN_RANGE[1], step=100,
                                    description="Training pairs", **label)
        self.button = w.Button(description="Train", button_style="primary", tooltip="train with these values")
        self.stop_button = w.Button(description="Stop", disabled=True, tooltip="stop after the current epoch")
        self.progress = w.IntProgress(value=0, min=0, max=self.epochs.value, description="Epoch 0",
                                      style={"description_width": "80px"}, layout=w.Layout(width="420px"))
        self.message = w.HTML()
        self.image = w.Image(format="png")

        self.button.on_click(lambda _: self.train())
        self.stop_button.on_click(lambda _: self.stop())
        self.model.observe(self._on_model_change, names="value")
        controls = w.HBox([w.VBox([self.model, self.optimizer, self.lr, self.epochs]),
                           w.VBox([self.batch_size, self.aux_weight, self.rounds, self.nb_train])])
        title = w.HTML(f'<div style="{FONT}"><b>Retrain a model</b> ({p.name} preset: {p.nb_val} validation and '
                       f'{p.nb_test} test pairs per round; round r uses seed {p.eval_seed} + r, the data of the '
                       'committed evaluation)</div>')
        self.widget = w.VBox([title, controls, w.HBox([self.button, self.stop_button, self.progress]),
                              self.message, self.image])
        self._show_idle()

    # ------------------------------------------------------------------------------ values

    def config(self):
        """The TrainConfig of the current values; ValueError (with the reason) if they cannot train."""
        config = TrainConfig(model=self.model.value, optimizer=self.optimizer.value, lr=float(self.lr.value),
                             batch_size=int(self.batch_size.value), epochs=int(self.epochs.value),
                             aux_weight=float(self.aux_weight.value), nb_train=int(self.nb_train.value),
                             nb_val=self.preset.nb_val, nb_test=self.preset.nb_test, device="auto")
        config.validate()
        if config.batch_size > config.nb_train:
            raise ValueError(f"the batch size ({config.batch_size}) is larger than the number of training pairs "
                             f"({config.nb_train}); lower it or add training pairs")
        return config

    def seeds(self):
        return [self.preset.eval_seed + r for r in range(int(self.rounds.value))]

    # ------------------------------------------------------------------------------ actions

    @property
    def running(self):
        return self._busy

    def train(self):
        """Start a training with the current values in a background thread (what Train does).
        Returns True if it started; False, with the reason in the panel, if it was refused."""
        with self._lock:
            if self._busy:
                self._say("A training is already running: wait for it to end (or click Stop). "
                          "This click was ignored.", "warning", keep=True)
                return False
            try:
                config = self.config()
            except ValueError as error:
                self._say(f"Not started: {error}.", "error")
                return False
            self._busy = True
            self.nb_trainings += 1
            self._stop.clear()
            self.button.disabled = True
            self.stop_button.disabled = False
            self.progress.max, self.progress.value = config.epochs, 0
            self.progress.description, self.progress.bar_style = "Epoch 0", ""
            seeds = self.seeds()
            self._say(f"Preparing {len(seeds)} round(s) of {config.model}...", "info")
            self._thread = threading.Thread(target=self._run, args=(config, seeds), daemon=True,
                                            name="retrain-panel")
            self._thread.start()
            return True

    def stop(self):
        """Ask the running training to stop after its current epoch."""
        if self._busy:
            self._stop.set()
            self.stop_button.disabled = True

    def wait(self, timeout=None):
        """Join the training thread (if any); True when no training is running afterwards."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self._busy

    # ------------------------------------------------------------------------------ the thread

    def _run(self, config, seeds):
        start = time.perf_counter()
        try:
            def on_epoch(epoch, history):
                self.progress.value = epoch
                self.progress.description = f"Epoch {epoch}"
                val = _mean_std(history["val_acc"][:, epoch - 1])
                self._say(f"Training {config.model} ({len(seeds)} round(s)): epoch {epoch}/{config.epochs}"
                          + (f", validation accuracy {_pct(val[0])} %" if val else ""), "info")
                self.image.value = self._draw(config, history, epoch)
                if self._stop.is_set():
                    raise _Stopped(epoch)

            result = self.train_fn(config, seeds, on_epoch=on_epoch)
            self.last_result = result
            self.progress.bar_style = "success"
            self._say(self._result_text(result, time.perf_counter() - start), "ok")
        except _Stopped as stopped:
            self.progress.bar_style = "warning"
            self._say(f"Stopped after epoch {stopped.args[0]}/{config.epochs}; no result kept.", "warning")
        except Exception as error:  # shown in the panel: the thread has no one else to tell
            self.last_error = traceback.format_exc()
            self.progress.bar_style = "danger"
            self._say(f"Training failed: {type(error).__name__}: {error}", "error")
        finally:
            with self._lock:
                self._busy = False
                self.button.disabled = False
                self.stop_button.disabled = True

    # ------------------------------------------------------------------------------ display

    def _say(self, text, kind="info", keep=False):
        """Show one message; `keep` appends it under the current one (a refusal while training)."""
        line = f'<div style="color:{STYLE[kind]}; {FONT}">{text}</div>'
        if keep and self.message.value:
            line = self.message.value.split("</div>")[0] + "</div>" + line
        self.message.value = line

    def _read_committed(self):
        """(summary rows, evaluation dict) of the preset's committed evaluation, or (None, None)."""
        try:
            return summary(self.preset, self.results_dir), load_evaluation(self.preset, self.results_dir)
        except (ResultsError, FileNotFoundError, KeyError):
            return None, None

    def _committed_setting(self, model):
        """The optimizer and rate the study used for `model`: the evaluation's, else the grid's choice."""
        rows, _ = self._committed
        if rows and model in rows:
            return {"optimizer": rows[model]["optimizer"], "lr": rows[model]["lr"]}
        try:
            return load_grid(self.preset, self.results_dir)["choice"]["common"]
        except (ResultsError, FileNotFoundError, KeyError):
            return None

    def committed_text(self, model):
        rows, evaluation = self._committed
        if not rows or model not in rows:
            return f"no committed result for {model} ({self.preset.name} preset)"
        row = rows[model]
        return (f"committed {row['n_rounds']}-round result for {model}: {_pct(row['mean_acc'])} ± "
                f"{_pct(row['std_acc'])} % ({row['optimizer']}, lr {row['lr']:g}, "
                f"{evaluation['preset']['epochs']} epochs, {evaluation['preset']['nb_train']} training pairs)")

    def _result_text(self, result, seconds):
        acc = _mean_std(result.final("test_acc"))
        diverged = sum(d is not None for d in result.diverged_epoch)
        text = (f"Done in {seconds:.0f} s: test accuracy <b>{_pct(acc[0])} ± {_pct(acc[1])} %</b> "
                f"(mean ± std over {len(result.seeds)} round(s))" if acc else
                f"Done in {seconds:.0f} s: every round diverged, no test accuracy")
        if diverged and acc:
            text += f", {diverged} round(s) diverged"
        return text + f".<br>For comparison, the {self.committed_text(result.config.model)}."

    def _on_model_change(self, change):
        if not self._busy:
            self._show_idle()

    def _show_idle(self):
        self._say(f"Set the values and click Train. For comparison, the {self.committed_text(self.model.value)}.")
        self.image.value = self._draw(None, None, 0)

    def _committed_curve(self, model):
        """Mean test accuracy (%) per epoch of the committed evaluation of `model`, or None."""
        _, evaluation = self._committed
        entry = evaluation and evaluation["protocols"]["common"]["models"].get(model)
        if not entry:
            return None
        values = np.array([[np.nan if v is None else v for v in row] for row in entry["curves"]["test_acc"]], float)
        with np.errstate(all="ignore"):
            return 100 * np.nanmean(values, axis=0)

    def _draw(self, config, history, epoch):
        """PNG bytes: training loss and accuracies (mean over rounds, +- std bands) up to `epoch`,
        with the committed mean test accuracy of the model dashed; before any training, that
        committed curve alone."""
        model = config.model if config is not None else self.model.value
        fig = Figure(figsize=(8.4, 2.9), dpi=90, layout="constrained")
        FigureCanvasAgg(fig)
        ax_loss, ax_acc = fig.subplots(1, 2)
        committed = self._committed_curve(model)
        if committed is not None:
            ax_acc.plot(np.arange(1, committed.size + 1), committed, "--", color=COLORS["committed"], linewidth=1,
                        label="committed evaluation, test (mean)")
        if history is not None and epoch > 0:
            x = np.arange(1, epoch + 1)
            with np.errstate(all="ignore"):
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
                ax_loss.yaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))  # 0.2, not 2e-01
                ax_loss.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))
            nb_epochs = config.epochs
            title = f"{model}, {config.optimizer} lr {config.lr:.2g}: epoch {epoch}/{nb_epochs}"
        else:
            nb_epochs = committed.size if committed is not None else self.epochs.value
            ax_loss.text(0.5, 0.5, "click Train", ha="center", va="center", transform=ax_loss.transAxes,
                         color="0.5")
            ax_loss.set_yticks([])
            title = f"{model}: " + ("committed evaluation" if committed is not None else "no committed result")
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
