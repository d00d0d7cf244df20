"""Figures of the study, drawn only from the saved results files (never from a training call).

    from lib.plots import draw_all, box_plot
    paths = draw_all("course")              # every figure as figures/course_<name>.png and .pdf
    box_plot(load_evaluation("course"))     # one figure, e.g. as the last line of a notebook cell

Each draw function takes the dict of a results file (`lib.experiments.load_grid` /
`load_evaluation`) and returns a `matplotlib.figure.Figure`. Figures are built with the object API
(`Figure(...)`, not `pyplot.figure`): this module never selects a backend and keeps no global figure
state, so it runs headless (tests, `make`) and many figures can be drawn without leaking memory.
In a notebook the returned figure displays inline (once): inside a Jupyter kernel whose backend
is the default inline one, importing this module loads that backend so IPython knows how to show
a Figure; no backend is ever selected or changed here.

    box_plot          test error rate (%) per model over the rounds: boxes plus every round as a point,
                      failed rounds (lib.stats.failure_reason) as red crosses
    learning_curves   train loss / train acc / validation acc / test acc per epoch: the median over the
                      healthy rounds bold with its interquartile band, each failed round dashed
    overfitting_plot  training against validation accuracy per epoch (median and interquartile band)
    grid_heatmaps     the grid search: validation accuracy per optimizer x learning rate, one panel
                      per model, the choices marked (the test set plays no part in it)
    comparison_plot   paired differences of test accuracy with their 95% confidence intervals
    seed_models_plot  test accuracy of every architecture (002 and the seed reports'), by report
    best_plot         the best model: its tuning gains on validation, and the rounds of its confirmation
                      block beside NetWSAL (common and own setting)

One colour per model across every figure (`model_colors`), fixed by the registry order of
`lib.models`, so a model keeps its colour when more architectures are evaluated beside it.
"""
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import LogFormatter, MaxNLocator

from lib import stats
from lib.engine import last_measured
from lib.experiments import PROJECT_ROOT, get_preset, load_evaluation, load_grid

FIGURES_DIR = PROJECT_ROOT / "figures"
WIDTH = 6.5  # inches: the text width of the report, so figures are shown at their natural size
HALF = 3.15  # inches: half the text width less a gutter (two figures side by side in the report)
DPI = 150
FONT = 8  # points, ticks and cell text; labels and titles are a little larger
MIN_FONT = 7  # points: no text of a figure is smaller (the report places figures at their drawn size)
CURVE_TITLES = {
    "train_loss": "Training loss (main + auxiliary)",
    "train_acc": "Training accuracy (%)",
    "val_acc": "Validation accuracy (%)",
    "test_acc": "Test accuracy (%)",
}
PROTOCOLS = ("common", "per_model")


def _enable_notebook_display():
    """In a Jupyter kernel whose configured backend is the inline one (the kernel's default),
    load that backend's module now, which registers how IPython displays a Figure; a returned
    figure then shows inline without pyplot. Elsewhere do nothing: no backend is chosen here."""
    if "ipykernel" not in sys.modules:
        return
    try:
        import matplotlib
        from IPython import get_ipython

        backend = matplotlib.get_backend(auto_select=False)  # what is configured; resolves nothing
        if get_ipython() is not None and backend and "inline" in backend:
            import matplotlib_inline.backend_inline  # noqa: F401  (configures inline display on import)
    except Exception:  # display is a convenience: never let it break an import
        pass


_enable_notebook_display()


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def model_colors(names=()):
    """{model name: colour}: registry order over tab10, then tab10's lighter twins (20 colours);
    names outside the registry follow it, so the colour of a model never depends on the figure."""
    from lib.models import list_models

    registry = list_models()
    order = registry + [n for n in names if n not in registry]
    tab20 = colormaps["tab20"].colors
    palette = list(tab20[0::2]) + list(tab20[1::2])
    return {name: palette[i % len(palette)] for i, name in enumerate(order)}


def _figure(height, width=WIDTH):
    return Figure(figsize=(width, height), layout="constrained")


def _protocol(evaluation, protocol):
    try:
        return evaluation["protocols"][protocol]
    except KeyError:
        raise ValueError(f"unknown protocol {protocol!r}; this evaluation has "
                         f"{', '.join(evaluation['protocols'])}") from None


def _array(rows, scale=1.0):
    """List (rounds) of lists (epochs), None where missing -> float array (R, E), NaN where missing."""
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float).reshape(len(rows), -1) * scale


def _nb_rounds(models):
    return max((len(e["test_acc"]) for e in models.values()), default=0)


def _setting(optimizer, lr):
    return f"{optimizer}, lr {lr:g}"


def _protocol_text(evaluation, protocol):
    if protocol == "common":
        models = _protocol(evaluation, protocol)["models"]
        settings = {(e["optimizer"], e["lr"]) for e in models.values()}
        if len(settings) == 1:
            return "all models: " + _setting(*settings.pop())
        return "common setting"
    if protocol == "per_model":
        return "each model with its own best setting"
    return protocol


def _preset_name(results):
    return results.get("preset", {}).get("name", "?")


def _params(n, compact=False):
    if n is None:
        return "? params"
    if compact:
        return f"{n / 1e3:.0f}k" if n >= 1e4 else f"{n / 1e3:.1f}k"
    return f"{n:,} params"


def _p_text(p):
    if p is None:
        return "n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


class _PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers (0.05, 0.1, 2) where matplotlib would write 1e-01."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def _legend_columns(names, font=FONT, width=WIDTH):
    """As many legend columns as fit the figure width (a line handle, a gap and the longest name)."""
    entry = (0.62 * max((len(n) for n in names), default=1) + 4) * font  # points
    return max(1, min(len(names), int(width * 72 // entry)))


def _save_atomic(fig, path, **kwargs):
    """Save to a temporary file beside `path`, then rename: a failure never leaves half an image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # No creation date in the PDF: redrawing unchanged numbers gives the same file.
            fig.savefig(f, format=fmt, metadata={"CreationDate": None} if fmt == "pdf" else None, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def failed_mask(entry):
    """(R,) bool: the failed rounds of an evaluated entry, by lib.stats's rule (validation accuracy)."""
    val = last_measured(_array(entry["curves"]["val_acc"]))
    return stats.failed_mask(val, entry.get("diverged_epoch"))


def box_plot(evaluation, protocol="common", width=WIDTH):
    """Test error rate (%) of each model over the evaluation rounds: a box per model (the healthy
    and the failed rounds together) and every round as a jittered point, the failed rounds as red
    crosses; the x labels give the parameter count and median (full width) and the failed count."""
    models = _protocol(evaluation, protocol)["models"]
    names = list(models)
    colors = model_colors(names)
    many = len(names) > 6
    compact = width < 4
    fig = _figure(3.9 if many else 2.5 if compact else 3.6, width)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)  # fixed jitter: redrawing gives the same figure
    data, fails, labels = [], [], []
    for name in names:
        entry = models[name]
        acc = np.array([np.nan if a is None else a for a in entry["test_acc"]], dtype=float)
        failed = failed_mask(entry) & ~np.isnan(acc)
        err = 100 * (1 - acc)
        data.append(err[~np.isnan(acc)])
        fails.append(failed[~np.isnan(acc)])
        lost = int(np.isnan(acc).sum())
        done = err[~np.isnan(err)]
        if many or compact:
            label = f"{name} ({_params(entry.get('nb_parameters'), compact=True)})" if many else \
                f"{name}\n{_params(entry.get('nb_parameters'), compact=True)} params"
        else:
            median = f"median {np.median(done):.1f} %" if done.size else "no round"
            label = f"{name}\n{_params(entry.get('nb_parameters'))}\n{median}"
            if protocol != "common":
                label += f"\n{_setting(entry['optimizer'], entry['lr'])}"
        if failed.sum():
            label += f"\n{int(failed.sum())} failed" if not many else f", {int(failed.sum())} failed"
        if lost:
            label += f"\n{lost} diverged" if not many else f", {lost} div."
        labels.append(label)
    positions = np.arange(1, len(names) + 1)
    boxes = ax.boxplot([d if d.size else [np.nan] for d in data], positions=positions, widths=0.55,
                       patch_artist=True, showfliers=False, medianprops={"color": "black", "linewidth": 1.2})
    for patch, name in zip(boxes["boxes"], names):
        patch.set_facecolor((*colors[name][:3], 0.35))
        patch.set_edgecolor(colors[name])
    for pos, err, failed, name in zip(positions, data, fails, names):
        x = pos + rng.uniform(-0.14, 0.14, size=err.size)
        ax.scatter(x[~failed], err[~failed], s=10 if compact else 14, color=colors[name], edgecolors="black",
                   linewidths=0.4, zorder=3)
        if failed.any():
            ax.scatter(x[failed], err[failed], s=30, marker="X", color="#d62728", edgecolors="black",
                       linewidths=0.4, zorder=4)
    ax.set_xticks(positions, labels)
    if many:
        ax.tick_params(axis="x", labelrotation=35)
        for text in ax.get_xticklabels():
            text.set_horizontalalignment("right")
            text.set_rotation_mode("anchor")
    ax.tick_params(which="both", labelsize=MIN_FONT if compact else FONT)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("Test error rate (%)", fontsize=FONT)
    ax.yaxis.grid(True, linewidth=0.5, alpha=0.5)
    ax.set_axisbelow(True)
    if any(f.any() for f in fails):
        ax.legend(handles=[Line2D([], [], linestyle="none", marker="X", markersize=6, color="#d62728",
                                  markeredgecolor="black", markeredgewidth=0.4, label="failed round")],
                  fontsize=MIN_FONT, loc="upper right", frameon=False, handletextpad=0.2)
    title = f"Test error over {_nb_rounds(models)} rounds ({_preset_name(evaluation)} preset; " \
            f"{_protocol_text(evaluation, protocol)})"
    if compact:
        title = f"Test error of every round ({_nb_rounds(models)} per model)"
    ax.set_title(title, fontsize=FONT if compact else FONT + 2)
    return fig


def _median_band(values):
    """Epoch-wise median and interquartile range (25th, 75th percentiles) of (R, E) values, NaN ignored."""
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an epoch no round measured: NaN
            return (np.nanmedian(values, axis=0), np.nanpercentile(values, 25, axis=0),
                    np.nanpercentile(values, 75, axis=0))


def learning_curves(evaluation, protocol="common", metrics=tuple(CURVE_TITLES), width=WIDTH):
    """One panel per metric, one colour per model: the epoch-wise median over the model's healthy
    rounds in bold with its interquartile band (robust: a few failed rounds do not move it, unlike a
    mean on a log axis), and each failed round (lib.stats's rule) as its own dashed line. Epochs
    where no round was measured are skipped (sparse evaluation); a round's missing values
    (divergence) leave a gap in its line."""
    models = _protocol(evaluation, protocol)["models"]
    names = list(models)
    colors = model_colors(names)
    nb_rounds = _nb_rounds(models)
    nb_epochs = max((len(row) for e in models.values() for row in e["curves"][metrics[0]]), default=1)
    ncols = 2
    nrows = -(-len(metrics) // ncols)
    legend_columns = _legend_columns(names, width=width)
    fig = _figure(2.1 * nrows + 0.75 + 0.18 * (-(-len(names) // legend_columns)), width)
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel()
    handles = []
    for ax, metric in zip(axes, metrics):
        scale = 1 if metric == "train_loss" else 100
        for name in names:
            values = _array(models[name]["curves"][metric], scale)  # (R, E)
            failed = failed_mask(models[name])
            epochs = np.arange(1, values.shape[1] + 1)
            measured = ~np.all(np.isnan(values), axis=0)
            x, values = epochs[measured], values[:, measured]
            healthy = values[~failed] if (~failed).any() else values
            median, low, high = _median_band(healthy)
            ax.fill_between(x, low, high, color=colors[name], alpha=0.25, linewidth=0)
            (line,) = ax.plot(x, median, color=colors[name], linewidth=1.6, label=name,
                              marker="o" if x.size <= 3 else None, markersize=3)
            for row in values[failed]:
                ax.plot(x, row, color=colors[name], linewidth=0.9, linestyle=(0, (3, 1.5)))
            if metric == metrics[0]:
                handles.append(line)
        if metric == "train_loss":
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
            ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))
        ax.set_title(CURVE_TITLES.get(metric, metric), fontsize=FONT)
        ax.tick_params(which="both", labelsize=MIN_FONT)
        ax.grid(True, linewidth=0.5, alpha=0.4)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.set_xlim(0.5, nb_epochs + 0.5)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    for ax in axes[(nrows - 1) * ncols:]:
        ax.set_xlabel("Epoch", fontsize=FONT)
    handles.append(Line2D([], [], color="0.3", linewidth=0.9, linestyle=(0, (3, 1.5)), label="a failed round"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), legend_columns), fontsize=MIN_FONT,
               frameon=False)
    fig.suptitle(f"Learning curves ({_preset_name(evaluation)} preset; {_protocol_text(evaluation, protocol)}): "
                 f"{nb_rounds} rounds per model,\nmedian of the healthy rounds and interquartile band; failed "
                 "rounds dashed", fontsize=FONT)
    return fig


def overfitting_plot(evaluation, protocol="common", width=HALF):
    """Training (dashed) against validation (solid) accuracy per epoch, one colour per model: the
    median over the model's healthy rounds with its interquartile band. The gap between the two
    is how much the model overfits its 1000 training pairs."""
    models = _protocol(evaluation, protocol)["models"]
    names = list(models)
    colors = model_colors(names)
    fig = _figure(2.75, width)
    ax = fig.add_subplot()
    for name in names:
        failed = failed_mask(models[name])
        for metric, style in (("train_acc", (0, (3, 1.5))), ("val_acc", "-")):
            values = _array(models[name]["curves"][metric], 100)
            epochs = np.arange(1, values.shape[1] + 1)
            measured = ~np.all(np.isnan(values), axis=0)
            x, values = epochs[measured], values[:, measured]
            median, low, high = _median_band(values[~failed] if (~failed).any() else values)
            ax.fill_between(x, low, high, color=colors[name], alpha=0.2, linewidth=0)
            ax.plot(x, median, color=colors[name], linewidth=1.3, linestyle=style)
    ax.set_xlabel("Epoch", fontsize=FONT)
    ax.set_ylabel("Accuracy (%)", fontsize=FONT)
    ax.tick_params(which="both", labelsize=MIN_FONT)
    ax.grid(True, linewidth=0.5, alpha=0.4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    handles = [Line2D([], [], color=colors[n], linewidth=1.3, label=n) for n in names]
    handles += [Line2D([], [], color="0.3", linewidth=1.3, linestyle=(0, (3, 1.5)), label="training"),
                Line2D([], [], color="0.3", linewidth=1.3, label="validation")]
    fig.legend(handles=handles, fontsize=MIN_FONT, ncol=3, loc="outside lower center", frameon=False,
               handlelength=1.8, columnspacing=0.8, labelspacing=0.2)
    ax.set_title("Training vs validation accuracy (median, IQR)", fontsize=FONT)
    return fig


def grid_heatmaps(grid):
    """The grid search as one heatmap per model (optimizers x learning rates): VALIDATION accuracy
    mean +- std (%) over the grid rounds, each model's best cell outlined, the common setting
    starred (a star in the cell text). Choices are read from the file, never recomputed; test accuracy is left out."""
    cells = grid["cells"]
    names = list(dict.fromkeys(c["model"] for c in cells))
    optimizers = list(dict.fromkeys(c["optimizer"] for c in cells))
    lrs = sorted({c["lr"] for c in cells})
    index = {(c["model"], c["optimizer"], c["lr"]): c for c in cells}
    ncols = 2 if len(names) <= 4 else 3 if len(names) <= 9 else 4
    nrows = -(-len(names) // ncols)
    two_lines = ncols > 2 or len(lrs) > 3
    font = MIN_FONT
    fig = _figure(nrows * (0.5 + 0.3 * len(optimizers) * (1.3 if two_lines else 1)) + 1.0)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()

    def pct(v):
        return np.nan if v is None else 100 * v

    tables = {}
    for name in names:
        table = np.full((len(optimizers), len(lrs)), np.nan)
        for i, opt in enumerate(optimizers):
            for j, lr in enumerate(lrs):
                if (name, opt, lr) in index:
                    table[i, j] = pct(index[name, opt, lr]["val_acc_mean"])
        tables[name] = table
    finite = np.concatenate([t[np.isfinite(t)] for t in tables.values()] + [np.array([])])
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0, 100)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    cmap = colormaps["viridis"].with_extremes(bad="0.85")
    common = grid["choice"]["common"]
    image = None
    for ax, name in zip(axes, names):
        table = tables[name]
        image = ax.imshow(table, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        for i, opt in enumerate(optimizers):
            for j, lr in enumerate(lrs):
                cell = index.get((name, opt, lr))
                if cell is None:
                    continue
                star = " ★" if (opt, lr) == (common["optimizer"], common["lr"]) else ""
                if cell["val_acc_mean"] is None:
                    text, shade = f"all rounds{star}\ndiverged", 1.0
                else:
                    mean, std = pct(cell["val_acc_mean"]), pct(cell["val_acc_std"] or 0)
                    text = f"{mean:.1f}{star}\n± {std:.1f}" if two_lines else f"{mean:.1f} ± {std:.1f}{star}"
                    shade = (table[i, j] - vmin) / (vmax - vmin)
                    if cell.get("diverged_rounds"):
                        text += f"\n{cell['diverged_rounds']} diverged"
                ax.text(j, i, text, ha="center", va="center", fontsize=font,
                        color="black" if shade > 0.55 else "white")
        best = grid["choice"]["per_model"].get(name)
        if best and best["optimizer"] in optimizers and best["lr"] in lrs:
            i, j = optimizers.index(best["optimizer"]), lrs.index(best["lr"])
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=2.2,
                                   clip_on=False, zorder=4))
        ax.set_title(name, fontsize=FONT + 1)
        ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
        ax.set_yticks(range(len(optimizers)), optimizers)
        ax.tick_params(labelsize=FONT, length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    for k, ax in enumerate(axes[:len(names)]):
        if k >= len(names) - ncols:  # the lowest panel of each column
            ax.set_xlabel("Learning rate", fontsize=FONT)
            ax.xaxis.set_tick_params(labelbottom=True)
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes[:len(names)]), shrink=0.9, aspect=30, pad=0.02)
        bar.set_label("Validation accuracy (%)", fontsize=FONT)
        bar.ax.tick_params(which="both", labelsize=FONT)
    fig.legend(handles=[Patch(fill=False, edgecolor="#d62728", linewidth=2.2, label="best setting of the model"),
                        Line2D([], [], linestyle="none", marker="*", markersize=9, color="black",
                               label="common setting (best mean over the models)")],
               loc="outside lower center", ncol=2, fontsize=FONT, frameon=False)
    preset = grid.get("preset", {})
    fig.suptitle(f"Grid search ({preset.get('name', '?')} preset, {preset.get('epochs', '?')} epochs, "
                 f"{len(grid.get('seeds', []))} rounds per cell): validation accuracy (%), mean ± std.\n"
                 "Choices are made on validation accuracy; the test set plays no part in them.",
                 fontsize=FONT + 1)
    return fig


def comparison_plot(evaluation, protocol="common"):
    """Each comparison of the evaluation as the mean paired difference of test accuracy
    (b - a, percentage points) with its 95% confidence interval; p-values on the right."""
    block = _protocol(evaluation, protocol)
    comparisons = block["comparisons"]
    colors = model_colors(list(block["models"]))
    fig = _figure(1.3 + 0.5 * max(len(comparisons), 1))
    ax = fig.add_subplot()
    if not comparisons:
        ax.text(0.5, 0.5, "no comparisons in this evaluation", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    ys = np.arange(len(comparisons))[::-1]
    labels, p_labels = [], []
    for y, c in zip(ys, comparisons):
        d = 100 * (c["mean_diff"] or 0.0)
        if c.get("ci95"):
            lo, hi = (100 * v for v in c["ci95"])
            xerr = [[d - lo], [hi - d]]
        else:
            xerr = None
        ax.errorbar(d, y, xerr=xerr, fmt="o", color=colors.get(c["b"], "black"), ecolor="black", elinewidth=1.2,
                    capsize=3, markersize=6, markeredgecolor="black", markeredgewidth=0.5, zorder=3)
        labels.append(f"{c['b']} − {c['a']}\n{c.get('question', '')}")
        t_p = c.get("t_p_holm", c.get("paired_t_p"))
        w_p = c.get("wilcoxon_p_holm")
        p_labels.append(f"t-test: {_p_text(t_p)}" + (f"\nWilcoxon: {_p_text(w_p)}" if w_p is not None else ""))
    ax.axvline(0, color="0.4", linestyle="--", linewidth=1)
    ax.set_yticks(ys, labels)
    ax.set_ylim(-0.6, len(comparisons) - 0.4)
    right = ax.secondary_yaxis("right")
    right.set_yticks(ys, p_labels)
    right.tick_params(labelsize=MIN_FONT, length=0)
    ax.tick_params(which="both", labelsize=FONT)
    ax.xaxis.grid(True, linewidth=0.5, alpha=0.5)
    ax.set_axisbelow(True)
    ax.set_xlabel("Difference in test accuracy (percentage points), mean over paired rounds and its 95% CI",
                  fontsize=FONT)
    n = max((c.get("n_pairs", 0) for c in comparisons), default=0)
    ax.set_title(f"Effect on test accuracy: {n} paired rounds\n({_preset_name(evaluation)} preset; "
                 f"{_protocol_text(evaluation, protocol)})", fontsize=FONT + 1)
    return fig


# ---------------------------------------------------------------------------------------------
# The later studies: every seed architecture (seed_models.json), the best model (best.json)
# ---------------------------------------------------------------------------------------------

REPORT_COLORS = {"002": "tab:blue", "000": "tab:orange", "003": "tab:green", "004": "tab:purple"}


def _accuracies(entry):
    """Test accuracies (%) of the measured rounds of an entry that has them, else an empty array."""
    acc = np.array([np.nan if a is None else a for a in entry.get("test_acc") or []], dtype=float)
    return 100 * acc[~np.isnan(acc)]


def _dots(ax, y, values, color, rng, mean=None, std=None, horizontal=True):
    """Every round as a jittered dot, and the mean +- std as a bar with a diamond."""
    if values.size:
        jitter = y + rng.uniform(-0.18, 0.18, size=values.size)
        xy = (values, jitter) if horizontal else (jitter, values)
        ax.scatter(*xy, s=9, color=color, alpha=0.55, linewidths=0, zorder=2)
        mean = values.mean() if mean is None else mean
        std = (values.std(ddof=1) if values.size > 1 else 0.0) if std is None else std
    if mean is None:
        return
    if horizontal:
        ax.errorbar(mean, y, xerr=std, fmt="D", color=color, ecolor="black", elinewidth=1.0, capsize=2.5,
                    markersize=4.5, markeredgecolor="black", markeredgewidth=0.5, zorder=3)
    else:
        ax.errorbar(y, mean, yerr=std, fmt="D", color=color, ecolor="black", elinewidth=1.0, capsize=2.5,
                    markersize=4.5, markeredgecolor="black", markeredgewidth=0.5, zorder=3)


def seed_models_plot(seed_models, evaluation=None):
    """Test accuracy (%) of every architecture: the four 002 models of the main study, then each seed
    report's architectures tuned as their report did (seed_models.json), one colour per report. Every
    round is a dot, the mean +- std a diamond with a bar; the dashed line is the reference's mean
    (NetWSAL). The 002 rounds come from the evaluation when it is given (same rounds), else only
    their mean +- std from seed_models.json."""
    from lib.models import model_report

    main = dict(seed_models.get("main_models", {}))
    if evaluation is not None and evaluation.get("seeds") == seed_models.get("seeds"):
        main = {n: e for n, e in evaluation["protocols"]["common"]["models"].items() if n in main} or main
    rows = [(n, "002", e) for n, e in main.items()]
    rows += [(n, e.get("report") or model_report(n), e) for n, e in seed_models["models"].items()]
    fig = _figure(0.8 + 0.13 * len(rows))
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    ys, labels, y, previous = [], [], 0.0, None
    for name, report, entry in rows:
        if previous is not None and report != previous:
            y += 0.5  # a gap between the reports
        previous = report
        ys.append(y)
        labels.append(f"{name} ({_params(entry.get('nb_parameters'), compact=True)})")
        color = REPORT_COLORS.get(report, "0.4")
        values = _accuracies(entry)
        mean = 100 * entry["mean_acc"] if entry.get("mean_acc") is not None else None
        std = 100 * (entry.get("std_acc") or 0.0) if mean is not None else None
        _dots(ax, y, values, color, rng, mean=mean, std=std)
        y += 1
    reference = seed_models.get("reference")
    if reference in main and main[reference].get("mean_acc") is not None:
        ax.axvline(100 * main[reference]["mean_acc"], color="0.35", linestyle="--", linewidth=0.9, zorder=1)
    ax.set_yticks(ys, labels)
    ax.set_ylim(max(ys, default=0) + 0.7, -0.7)  # first row on top
    ax.tick_params(which="both", labelsize=MIN_FONT)
    ax.xaxis.grid(True, linewidth=0.5, alpha=0.5)
    ax.set_axisbelow(True)
    ax.set_xlabel("Test accuracy at the last epoch (%)", fontsize=FONT)
    reports = list(dict.fromkeys(r for _, r, _ in rows))
    handles = [Line2D([], [], linestyle="none", marker="D", markersize=5, color=REPORT_COLORS.get(r, "0.4"),
                      markeredgecolor="black", markeredgewidth=0.5,
                      label=f"report {r}" + (" (main study)" if r == "002" else "")) for r in reports]
    if reference in main:
        handles.append(Line2D([], [], color="0.35", linestyle="--", linewidth=0.9, label=f"{reference} mean"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=FONT - 1, frameon=False)
    fig.suptitle(f"Every architecture, {len(seed_models.get('seeds', []))} rounds each ({_preset_name(seed_models)} "
                 "preset): dot = one round, diamond = mean ± std", fontsize=FONT)
    return fig


def best_plot(best, evaluation=None, confirmations=None, ablation=None):
    """The best-model study in two panels. Left, the tuning: each step's paired VALIDATION gain
    (points) over the recipe kept before it, on the tuning rounds (`vs_current` of the `ablation`
    rows, default best.json's): the mean as a marker, filled where the step was kept, and a bar down
    to the lower end of its one-sided interval (the keep rule: kept when that end is above zero).
    Right: the test accuracy (%) of every round of the confirmation blocks (`confirmations`, {track:
    the confirmation file of its recipe}, when given: per block, NetWSAL under the common setting
    and under its own best setting, then the tracks confirmed on it), else of the development
    rounds (best.json's tracks, beside NetWSAL's from the evaluation when given). A track whose
    config repeats the course track's is drawn once."""
    track_colors = {"course": "tab:cyan", "open": "tab:purple"}
    rows = [r for r in (ablation or best["ablation"]) if r.get("vs_current")]
    fig = _figure(0.95 + 0.19 * max(len(rows), 4))
    nb_blocks = len({c["block"] for c in (confirmations or {}).values()})
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [0.75, 1] if nb_blocks < 2 else [0.6, 1.25]})
    confidence = None
    for y, row in enumerate(rows):
        vs = row["vs_current"]
        confidence = vs.get("confidence", confidence)
        color = track_colors.get(row["track"], "0.4")
        mean, lower = 100 * vs["gain_mean"], 100 * vs["gain_lower"]
        left.errorbar(mean, y, xerr=[[max(mean - lower, 0.0)], [0.0]], fmt="o", color=color, ecolor=color,
                      elinewidth=1.0, capsize=2.5, markersize=5.5, markerfacecolor=color if row["kept"] else "white",
                      markeredgewidth=1.2, zorder=3)
    left.axvline(0.0, color="0.35", linestyle="--", linewidth=0.9, zorder=1)
    left.set_yticks(range(len(rows)), ["+ " + r["step"] for r in rows])
    left.set_ylim(len(rows) - 0.5, -0.5)
    left.tick_params(which="both", labelsize=MIN_FONT)
    left.xaxis.grid(True, linewidth=0.5, alpha=0.5)
    left.set_axisbelow(True)
    nb_tuning = len(rows[0].get("seeds", [])) if rows else 0
    level = f"{100 * confidence:g} %" if confidence is not None else "one-sided"
    left.set_xlabel(f"Validation gain (points), {nb_tuning} rounds", fontsize=FONT)
    left.set_title("Tuning: gain of each step", fontsize=FONT)
    handles = [Line2D([], [], linestyle="none", marker="o", color="0.3", markerfacecolor="0.3", label="kept"),
               Line2D([], [], linestyle="none", marker="o", color="0.3", markerfacecolor="white", label="not kept"),
               Line2D([], [], color="0.3", linewidth=1.0, label=f"down to the lower end ({level}, one-sided)")]
    handles += [Patch(color=c, label=f"{t} track") for t, c in track_colors.items()
                if any(r["track"] == t for r in rows)]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=MIN_FONT, frameon=False)

    reference = best.get("reference")
    entries = []
    groups = []  # (block or None, references, {track: entry}): one group of paired rounds each
    if confirmations:
        for track, c in confirmations.items():
            group = next((g for g in groups if g[0] == c["block"]), None)
            if group is None:
                groups.append(group := (c["block"], c["references"], {}))
            group[2][track] = c["tracks"][track]
        blocks = [g[0] for g in groups]
        title = f"Confirmation block{'s' if len(blocks) > 1 else ''} " + " and ".join(str(b) for b in blocks)
        rounds = len(next(iter(confirmations.values()))["seeds"])
    else:
        references = {}
        if evaluation is not None and evaluation.get("seeds") == best.get("seeds"):
            references = {p: b["models"][reference] for p, b in evaluation["protocols"].items()
                          if reference in b["models"]}
        groups.append((None, references, best["tracks"]))
        title, rounds = "Development rounds", len(best.get("seeds", []))
    ref_colors = {"common": "0.55", "per_model": model_colors([reference])[reference] if reference else "0.3"}
    spans = []  # (block, first entry, last entry) of each group
    for block, references, tracks in groups:
        first = len(entries)
        for protocol, entry in references.items():
            setting = "common" if protocol == "common" else "own"
            entries.append((f"{reference}{' ' if len(groups) > 1 else chr(10)}{setting}", entry, ref_colors.get(protocol, "0.4")))
        course = tracks.get("course")
        for track, entry in tracks.items():
            if track != "course" and course is not None and entry["config"] == course["config"]:
                continue  # the same recipe (and runs) as the course track on this block
            same = track == "course" and any(t != "course" and e["config"] == entry["config"] for t, e in tracks.items())
            entries.append(("course\n= open" if same else f"{track}{' ' if len(groups) > 1 else chr(10)}track", entry,
                            track_colors.get(track, "0.4")))
        spans.append((block, first, len(entries) - 1))
    rng = np.random.default_rng(0)
    for x, (label, entry, color) in enumerate(entries):
        _dots(right, x, _accuracies(entry), color, rng, horizontal=False)
    right.set_xticks(range(len(entries)), [e[0] for e in entries])
    right.set_xlim(-0.6, len(entries) - 0.4)
    right.tick_params(which="both", labelsize=MIN_FONT)
    right.yaxis.grid(True, linewidth=0.5, alpha=0.5)
    right.set_axisbelow(True)
    right.set_ylabel("Test accuracy (%)", fontsize=FONT)
    right.set_title(title, fontsize=FONT)
    right.set_xlabel(f"{rounds} rounds, paired (same seeds)" if len(groups) < 2 else f"{rounds} rounds per block, paired",
                     fontsize=FONT)
    if len(groups) > 1:  # each block's entries under its name, a line between blocks; slanted labels
        right.tick_params(axis="x", labelrotation=40)
        for label in right.get_xticklabels():
            label.set(ha="right", rotation_mode="anchor")
        for k, (block, first, last) in enumerate(spans):
            right.text((first + last) / 2, 1.0, f"block {block}", transform=right.get_xaxis_transform(),
                       ha="center", va="bottom", fontsize=MIN_FONT)
            if k:
                right.axvline(first - 0.5, color="0.35", linestyle=":", linewidth=0.9)
        right.set_title(title, fontsize=FONT, pad=12)
    fig.suptitle(f"The best model ({_preset_name(best)} preset)", fontsize=FONT + 1)
    return fig


# ---------------------------------------------------------------------------------------------
# Everything
# ---------------------------------------------------------------------------------------------


def figures_of(grid, evaluation):
    """(name, draw) for every figure of a study, in order: the draws are deferred so that
    `draw_all` holds one figure at a time."""
    out = [("grid", lambda: grid_heatmaps(grid))]
    for protocol in PROTOCOLS:
        if protocol not in evaluation["protocols"]:
            continue
        suffix = "" if protocol == "common" else f"_{protocol}"
        out += [(f"boxplot{suffix}", lambda p=protocol: box_plot(evaluation, p, width=HALF if p == "common" else WIDTH)),
                (f"overfitting{suffix}", lambda p=protocol: overfitting_plot(evaluation, p)),
                (f"curves{suffix}", lambda p=protocol: learning_curves(evaluation, p)),
                (f"comparisons{suffix}", lambda p=protocol: comparison_plot(evaluation, p))]
    return out


def later_figures_of(preset, evaluation, results_dir=None):
    """(name, draw) for the figures of the later studies whose results file exists:
    `seed_models` (results/<preset>/seed_models.json) and `best` (results/<preset>/best.json, with
    each track's frozen recipe and confirmation when they exist, see lib.best.track_confirmations)."""
    from lib.best import track_confirmations, tried_steps
    from lib.experiments import preset_dir, read_json

    folder = preset_dir(preset, results_dir)
    out = []
    if (folder / "seed_models.json").exists():
        out.append(("seed_models", lambda: seed_models_plot(read_json(folder / "seed_models.json"), evaluation)))
    if (folder / "best.json").exists():
        out.append(("best", lambda: best_plot(read_json(folder / "best.json"), evaluation,
                                              track_confirmations(preset, results_dir) or None,
                                              tried_steps(preset, results_dir) or None)))
    from lib.when_study import figures_of as when_figures  # size.json, aux_weight.json, errors.json

    return out + when_figures(preset, results_dir)


def draw_all(preset="course", results_dir=None, figures_dir=None, formats=("png", "pdf")):
    """Draw every figure of a preset from its results files and save each as
    `<figures_dir>/<preset>_<name>.<format>` (written atomically). Returns the written paths.

    The figures of the later studies (`later_figures_of`) are drawn when their results file exists.
    Raises lib.experiments.ResultsError, naming the command to run, when a results file is missing.
    """
    name = get_preset(preset).name
    grid = load_grid(preset, results_dir)
    evaluation = load_evaluation(preset, results_dir)
    folder = Path(figures_dir) if figures_dir is not None else FIGURES_DIR
    paths = []
    for figure_name, draw in figures_of(grid, evaluation) + later_figures_of(preset, evaluation, results_dir):
        fig = draw()
        for fmt in formats:
            paths.append(_save_atomic(fig, folder / f"{name}_{figure_name}.{fmt}", dpi=DPI))
    return paths


# ---------------------------------------------------------------------------------------------
# Architecture diagram, drawn from the model itself
# ---------------------------------------------------------------------------------------------


def _layer_text(module):
    """Short label of one layer: 'conv 32@3×3', 'FC 128', 'max-pool 2', 'ReLU'."""
    from torch import nn

    if isinstance(module, nn.Conv2d):
        k = "×".join(str(s) for s in module.kernel_size)
        pad = f" pad {module.padding[0]}" if isinstance(module.padding, tuple) and any(module.padding) else ""
        return f"conv {module.out_channels}@{k}{pad}"
    if isinstance(module, nn.Linear):
        return f"FC {module.out_features}"
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
        return f"{'max' if isinstance(module, nn.MaxPool2d) else 'avg'}-pool {k}"
    if isinstance(module, (nn.Dropout, nn.Dropout2d)):
        return f"dropout {module.p:g}"
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return "batch norm"
    return {"Flatten": "flatten"}.get(type(module).__name__, type(module).__name__)


def _shape_text(shape):
    return "×".join(str(s) for s in shape)


def architecture_of(name, **options):
    """The structure of a registered two-branch model (the 002 family: a `branch` shared by both
    digits or two `branches`, then a `head`), read from the model: its layers, grouped into blocks
    (a layer with weights and the weight-free layers after it), the output shape of each block, how
    the branch outputs reach the head, and whether the model returns digit logits (auxiliary losses)
    and from where. One forward pass on random pairs, under hooks, answers the last three.

    Returns {"name", "nb_parameters", "shared", "auxiliary", "aux_at_branch_output", "merge",
    "branch": [blocks], "head": [blocks]}; a block is {"layers": [labels], "shape": "32×6×6"}.
    Raises ValueError for a model of another shape (it names the attributes it looks for).
    """
    import torch

    from lib.models import count_parameters, create_model

    model = create_model(name, **options).eval()
    if hasattr(model, "branch") and hasattr(model, "head"):
        shared, branches = True, [model.branch]
    elif hasattr(model, "branches") and len(getattr(model, "branches")) == 2 and hasattr(model, "head"):
        shared, branches = False, list(model.branches)
    else:
        raise ValueError(f"architecture_of draws two-branch models (a `branch` or two `branches`, then a "
                         f"`head`); {name} has neither")

    def leaves(module):
        return [m for m in module.modules() if not any(True for _ in m.children())]

    shapes, branch_out, head_in, hooks = {}, [], [], []

    def record_shape(module, inputs, output):  # returns None: a hook's return value would replace the output
        shapes[id(module)] = tuple(output.shape[1:])

    for module in leaves(branches[0]) + leaves(model.head):
        hooks.append(module.register_forward_hook(record_shape))
    for branch in branches:
        hooks.append(branch.register_forward_hook(lambda m, i, o: branch_out.append(o)))
    hooks.append(model.head.register_forward_pre_hook(lambda m, i: head_in.append(i[0])))
    x = torch.randn(3, 2, 14, 14, generator=torch.Generator().manual_seed(0))  # (3, 2, 14, 14)
    try:
        with torch.no_grad():
            _, digits = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    n = x.size(0)
    per_digit = (torch.stack(branch_out[0].split(n), 1) if shared else torch.stack(branch_out, 1))  # (3, 2, 10)
    concat = per_digit.flatten(1)  # (3, 20)
    if torch.equal(head_in[0], torch.relu(concat)):
        merge = ["ReLU", "concat"]
    elif torch.equal(head_in[0], concat):
        merge = ["concat"]
    else:
        merge = ["merge"]

    def blocks(module):
        out = []
        for layer in leaves(module):
            has_weights = any(True for _ in layer.parameters(recurse=False))
            if has_weights or not out:
                out.append({"layers": [], "shape": None})
            out[-1]["layers"].append(_layer_text(layer))
            if id(layer) in shapes:
                out[-1]["shape"] = _shape_text(shapes[id(layer)])
        return out

    return {
        "name": name, "nb_parameters": count_parameters(model), "shared": shared,
        "auxiliary": digits is not None,
        "aux_at_branch_output": digits is not None and torch.equal(digits, per_digit),
        "merge": merge, "merge_shape": _shape_text(head_in[0].shape[1:]),
        "branch": blocks(branches[0]), "head": blocks(model.head),
    }


def _draw_architecture(ax, arch, font=MIN_FONT):
    """One model on `ax`, whose data units are inches: each digit left to right through the branch
    blocks (digit 1 on the top row), the merge, the head and the comparison loss on the middle line;
    the auxiliary losses (if any) to the right of each branch output. Shared branches: one colour
    and one frame around both rows; separate branches: a colour and a frame each."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    width, height = ax.get_xlim()[1], ax.get_ylim()[1]
    box_h = 0.42
    y_mid = (height - 0.24) / 2 + 0.02  # below the title line
    y_rows = (y_mid + 0.5, y_mid - 0.5)  # the head's boxes fit between the rows

    def label(block):
        lines, line = [], ""
        for text in block["layers"]:  # the weight layer alone on the first line, the weight-free ones after
            if not lines:
                lines.append(text)
            elif line and len(line) + len(text) + 2 > 14:
                lines.append(line)
                line = text
            else:
                line = f"{line}, {text}" if line else text
        if line:
            lines.append(line)
        if block["shape"]:
            lines.append(f"→ {block['shape']}")
        return lines

    branch_labels = [label(b) for b in arch["branch"]]
    head_labels = [label(b) for b in arch["head"]]
    columns = ([["digit k", "1×14×14"]] + branch_labels + [arch["merge"] + [f"→ {arch['merge_shape']}"]]
               + head_labels + [["cross-entropy", "with target", "d₁ ≤ d₂"]])
    widths = np.array([0.056 * font / 6.5 * max(len(s) for s in c) + 0.12 for c in columns])
    margin = 0.03
    gaps = (width - 2 * margin - widths.sum()) / (len(columns) - 1)
    if gaps < 0.12:  # too many blocks: narrow them all
        widths *= (width - 2 * margin - 0.12 * (len(columns) - 1)) / widths.sum()
        gaps = 0.12
    lefts = margin + np.concatenate([[0], np.cumsum(widths[:-1] + gaps)])
    rights = lefts + widths

    palette = colormaps["tab20"].colors
    colors = [palette[1], palette[1]] if arch["shared"] else [palette[1], palette[3]]
    loss_face, loss_edge = "#fde0dd", "#c0392b"

    def box(x0, x1, y, lines, face, edge="0.25"):
        ax.add_patch(FancyBboxPatch((x0, y - box_h / 2), x1 - x0, box_h, boxstyle="round,pad=0,rounding_size=0.05",
                                    facecolor=face, edgecolor=edge, linewidth=0.7))
        ax.text((x0 + x1) / 2, y, "\n".join(lines), ha="center", va="center", fontsize=font, linespacing=1.15)

    def arrow(x0, y0, x1, y1, color="0.2"):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=7, color=color,
                                     linewidth=0.8, shrinkA=0, shrinkB=0))

    nb_branch = len(branch_labels)
    last, merge_col, loss_col = nb_branch, nb_branch + 1, len(columns) - 1
    for row, y in enumerate(y_rows):
        box(lefts[0], rights[0], y, [f"digit {row + 1}", "1×14×14"], "white")
        for b in range(nb_branch):
            box(lefts[1 + b], rights[1 + b], y, branch_labels[b], colors[row])
        for col in range(nb_branch):
            arrow(rights[col], y, lefts[col + 1], y)
    # frames: one around both rows (shared weights) or one per row (separate weights)
    x0, x1 = lefts[1] - 0.05, rights[last] + 0.05
    pad = 0.05
    frames = ([(y_rows[1] - box_h / 2 - pad, y_rows[0] + box_h / 2 + pad)] if arch["shared"]
              else [(y - box_h / 2 - pad, y + box_h / 2 + pad) for y in y_rows])
    for lo, hi in frames:
        ax.add_patch(FancyBboxPatch((x0, lo), x1 - x0, hi - lo, boxstyle="round,pad=0,rounding_size=0.06",
                                    fill=False, edgecolor="0.3", linestyle=(0, (3, 2)), linewidth=0.8))
    note = ("one branch, shared weights: the same layers for both digits" if arch["shared"]
            else "two branches, each with its own weights")
    ax.text((x0 + x1) / 2, y_mid, note, ha="center", va="center", fontsize=font, style="italic")
    # merge, head and main loss on the middle line
    box(lefts[merge_col], rights[merge_col], y_mid, columns[merge_col], "0.93")
    for y in y_rows:
        arrow(rights[last], y, lefts[merge_col], y_mid + (0.12 if y > y_mid else -0.12))
    for h in range(len(head_labels)):
        box(lefts[merge_col + 1 + h], rights[merge_col + 1 + h], y_mid, head_labels[h], palette[5])
    for col in range(merge_col, loss_col):
        arrow(rights[col], y_mid, lefts[col + 1], y_mid)
    box(lefts[loss_col], rights[loss_col], y_mid, columns[loss_col], loss_face, edge=loss_edge)
    # auxiliary losses: each branch output also goes right, above and below the middle line
    if arch["auxiliary"]:
        where = "branch output (pre-ReLU)" if arch["aux_at_branch_output"] else "digit logits"
        for row, y in enumerate(y_rows):
            box(lefts[merge_col + 1], rights[loss_col], y,
                ["auxiliary loss: cross-entropy", f"with the class of digit {row + 1},", f"on the {where}"],
                loss_face, edge=loss_edge)
            arrow(rights[last], y, lefts[merge_col + 1], y, color=loss_edge)
    ax.set_axis_off()


def architecture_diagram(names=("NetBase", "NetWSAL"), **options):
    """One panel per registered two-branch model, drawn from the model itself (`architecture_of`):
    its blocks and their output shapes, shared or separate branches, where the auxiliary losses attach."""
    archs = [architecture_of(n, **options) for n in names]
    panel = 1.78  # inches per model
    fig = Figure(figsize=(WIDTH, panel * len(archs)))
    for k, arch in enumerate(archs):
        ax = fig.add_axes((0, 1 - (k + 1) / len(archs), 1, 1 / len(archs)))  # data units = inches
        ax.set_xlim(0, WIDTH)
        ax.set_ylim(0, panel)
        parts = ["shared branch" if arch["shared"] else "two separate branches",
                 "main + auxiliary losses" if arch["auxiliary"] else "main loss only"]
        ax.text(0.03, panel - 0.04, f"{arch['name']}: {', '.join(parts)} ({_params(arch['nb_parameters'])})",
                ha="left", va="top", fontsize=FONT + 1)
        _draw_architecture(ax, arch)
    return fig
