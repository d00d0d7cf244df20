"""Figures of the study, drawn only from the saved results files (never from a training call).

    from lib.plots import draw_all, box_plot
    paths = draw_all("course")              # every study's figures as figures/course_<name>.png and .pdf
    box_plot(load_evaluation("course"))     # one figure, e.g. as the last line of a notebook cell

Each draw function takes the dict of a results file (`lib.experiments.load_grid` /
`load_evaluation`) and returns a `matplotlib.figure.Figure` built with the object API: this module
never selects a backend and keeps no global figure state, so it runs headless (tests, `make`) and
draws many figures without leaking memory. In a Jupyter kernel with the inline backend a returned
figure displays inline (once).

    box_plot          test error rate (%) per model over the rounds, failed rounds (lib.stats) as red crosses
    learning_curves   train loss and accuracies per epoch: median of the healthy rounds with its
                      interquartile band, each failed round dashed
    overfitting_plot  training against validation accuracy per epoch
    grid_heatmaps     validation accuracy per optimizer x learning rate, one panel per model, the choices
                      marked (the test set plays no part in it)
    comparison_plot   paired differences of test accuracy with their 95% confidence intervals

The later studies draw their own figures with these helpers; `draw_all` draws every study's
(lib.studies). One colour per model across every figure (`model_colors`): fixed by the registry
order, so a model keeps its colour when more architectures are evaluated beside it.
"""
import sys
import warnings
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import LogFormatter, MaxNLocator

from lib import stats
from lib.experiments import PROJECT_ROOT, atomic_path, final, get_preset
from lib.stats import nan_array

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
    """In a Jupyter kernel whose configured backend is the inline one, load that backend's module,
    which registers how IPython displays a Figure (without pyplot). Elsewhere do nothing."""
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


def figure(height, width=WIDTH):
    return Figure(figsize=(width, height), layout="constrained")


def _protocol(evaluation, protocol):
    try:
        return evaluation["protocols"][protocol]
    except KeyError:
        raise ValueError(f"unknown protocol {protocol!r}; this evaluation has "
                         f"{', '.join(evaluation['protocols'])}") from None


def _nb_rounds(models):
    return max((len(e["test_acc"]) for e in models.values()), default=0)


def _setting(optimizer, lr):
    return f"{optimizer}, lr {lr:g}"


def _protocol_text(evaluation, protocol):
    if protocol == "per_model":
        return "each model with its own best setting"
    settings = {(e["optimizer"], e["lr"]) for e in _protocol(evaluation, protocol)["models"].values()}
    return "all models: " + _setting(*settings.pop()) if len(settings) == 1 else "common setting"


def preset_name(results):
    return results.get("preset", {}).get("name", "?")


def params_text(n, compact=False):
    if n is None:
        return "? params"
    if compact:
        return f"{n / 1e3:.0f}k" if n >= 1e4 else f"{n / 1e3:.1f}k"
    return f"{n:,} params"


class PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers (0.05, 0.1, 2) where matplotlib would write 1e-01."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def style(ax, grid="both", labelsize=MIN_FONT, alpha=0.5, below=True):
    """Tick labels of `labelsize` points and a thin grid along `grid` ("x", "y", "both"), behind the data if `below`."""
    ax.tick_params(which="both", labelsize=labelsize)
    ax.grid(True, axis=grid, linewidth=0.5, alpha=alpha)
    if below:
        ax.set_axisbelow(True)


def save_figure(fig, path, **kwargs):
    """Save to a temporary file beside `path`, then rename: a failure never leaves half an image."""
    fmt = Path(path).suffix.lstrip(".")
    with atomic_path(path) as tmp:
        # No creation date in the PDF: redrawing unchanged numbers gives the same file.
        fig.savefig(tmp, format=fmt, metadata={"CreationDate": None} if fmt == "pdf" else None, **kwargs)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def failed_mask(entry):
    """(R,) bool: the failed rounds of an evaluated entry, by lib.stats's rule (validation accuracy)."""
    return stats.failed_mask(final(entry, "val_acc"), entry.get("diverged_epoch"))


def box_plot(evaluation, protocol="common", width=WIDTH):
    """Test error rate (%) of each model over the evaluation rounds: a box per model (the healthy
    and the failed rounds together) and every round as a jittered point, the failed rounds as red
    crosses; the x labels give the parameter count and median (full width) and the failed count."""
    models = _protocol(evaluation, protocol)["models"]
    names = list(models)
    colors = model_colors(names)
    many = len(names) > 6
    compact = width < 4
    fig = figure(3.9 if many else 2.5 if compact else 3.6, width)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)  # fixed jitter: redrawing gives the same figure
    data, fails, labels = [], [], []
    for name in names:
        entry = models[name]
        acc = nan_array(entry["test_acc"])
        measured = ~np.isnan(acc)  # a diverged round has no test accuracy
        err = 100 * (1 - acc[measured])
        failed = failed_mask(entry)[measured]
        data.append(err)
        fails.append(failed)
        params = params_text(entry.get("nb_parameters"), compact=True)
        if many:
            label = f"{name} ({params})"
        elif compact:
            label = f"{name}\n{params} params"
        else:
            median = f"median {np.median(err):.1f} %" if err.size else "no round"
            label = f"{name}\n{params_text(entry.get('nb_parameters'))}\n{median}"
            if protocol != "common":
                label += f"\n{_setting(entry['optimizer'], entry['lr'])}"
        sep = ", " if many else "\n"
        if failed.any():
            label += f"{sep}{failed.sum()} failed"
        if not measured.all():
            label += f"{sep}{(~measured).sum()} {'div.' if many else 'diverged'}"
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
    style(ax, "y", MIN_FONT if compact else FONT)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("Test error rate (%)", fontsize=FONT)
    if any(f.any() for f in fails):
        ax.legend(handles=[Line2D([], [], linestyle="none", marker="X", markersize=6, color="#d62728",
                                  markeredgecolor="black", markeredgewidth=0.4, label="failed round")],
                  fontsize=MIN_FONT, loc="upper right", frameon=False, handletextpad=0.2)
    title = (f"Test error of every round ({_nb_rounds(models)} per model)" if compact else
             f"Test error over {_nb_rounds(models)} rounds ({preset_name(evaluation)} preset; "
             f"{_protocol_text(evaluation, protocol)})")
    ax.set_title(title, fontsize=FONT if compact else FONT + 2)
    return fig


def _median_band(entry, metric, scale=100):
    """Of one curve of an evaluated entry, in `scale` units: the epochs (1-based) where any round was
    measured, the failed rounds' values there (R_failed, E), and the epoch-wise median and
    interquartile range over the healthy rounds (over all rounds when every one failed), NaN ignored."""
    values, failed = nan_array(entry["curves"][metric], scale), failed_mask(entry)
    measured = ~np.all(np.isnan(values), axis=0)
    x, values = np.arange(1, values.shape[1] + 1)[measured], values[:, measured]
    healthy = values[~failed] if (~failed).any() else values
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an epoch no healthy round measured: NaN
        return (x, values[failed], np.nanmedian(healthy, axis=0), np.nanpercentile(healthy, 25, axis=0),
                np.nanpercentile(healthy, 75, axis=0))


def learning_curves(evaluation, protocol="common"):
    """One panel per metric of CURVE_TITLES, one colour per model: the epoch-wise median over the model's healthy
    rounds in bold with its interquartile band (robust: a few failed rounds do not move it, unlike a
    mean on a log axis), and each failed round (lib.stats's rule) as its own dashed line. Epochs
    where no round was measured are skipped (sparse evaluation); a round's missing values
    (divergence) leave a gap in its line."""
    models = _protocol(evaluation, protocol)["models"]
    names = list(models)
    colors = model_colors(names)
    nb_epochs = max((len(row) for e in models.values() for row in e["curves"]["train_loss"]), default=1)
    entry = (0.62 * max((len(n) for n in names), default=1) + 4) * FONT  # points: a line handle, a gap, the name
    legend_columns = max(1, min(len(names), int(WIDTH * 72 // entry)))  # as many as fit the width
    fig = figure(2 * 2.1 + 0.75 + 0.18 * (-(-len(names) // legend_columns)))
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, metric in zip(axes, CURVE_TITLES):
        scale = 1 if metric == "train_loss" else 100
        for name in names:
            x, failed_rows, median, low, high = _median_band(models[name], metric, scale)
            ax.fill_between(x, low, high, color=colors[name], alpha=0.25, linewidth=0)
            ax.plot(x, median, color=colors[name], linewidth=1.6, label=name, marker="o" if x.size <= 3 else None,
                    markersize=3)
            for row in failed_rows:
                ax.plot(x, row, color=colors[name], linewidth=0.9, linestyle=(0, (3, 1.5)))  # unlabelled
        if metric == "train_loss":
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))
            ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))
        ax.set_title(CURVE_TITLES[metric], fontsize=FONT)
        style(ax, alpha=0.4, below=False)  # the grid over the bands
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.set_xlim(0.5, nb_epochs + 0.5)
    for ax in axes[2:]:
        ax.set_xlabel("Epoch", fontsize=FONT)
    handles = [line for line in axes[0].get_lines() if not line.get_label().startswith("_")]  # the medians
    handles.append(Line2D([], [], color="0.3", linewidth=0.9, linestyle=(0, (3, 1.5)), label="a failed round"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), legend_columns), fontsize=MIN_FONT,
               frameon=False)
    fig.suptitle(f"Learning curves ({preset_name(evaluation)} preset; {_protocol_text(evaluation, protocol)}): "
                 f"{_nb_rounds(models)} rounds per model,\nmedian of the healthy rounds and interquartile band; failed "
                 "rounds dashed", fontsize=FONT)
    return fig


def overfitting_plot(evaluation, protocol="common", width=HALF):
    """Training (dashed) against validation (solid) accuracy per epoch, one colour per model: the
    median over the model's healthy rounds with its interquartile band. The gap between the two
    is how much the model overfits its 1000 training pairs."""
    models = _protocol(evaluation, protocol)["models"]
    names = list(models)
    colors = model_colors(names)
    fig = figure(2.75, width)
    ax = fig.add_subplot()
    for name in names:
        for metric, dashes in (("train_acc", (0, (3, 1.5))), ("val_acc", "-")):
            x, _, median, low, high = _median_band(models[name], metric)
            ax.fill_between(x, low, high, color=colors[name], alpha=0.2, linewidth=0)
            ax.plot(x, median, color=colors[name], linewidth=1.3, linestyle=dashes)
    ax.set_xlabel("Epoch", fontsize=FONT)
    ax.set_ylabel("Accuracy (%)", fontsize=FONT)
    style(ax, alpha=0.4, below=False)
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
    fig = figure(nrows * (0.5 + 0.3 * len(optimizers) * (1.3 if two_lines else 1)) + 1.0)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()

    tables = {name: nan_array([[index.get((name, opt, lr), {}).get("val_acc_mean") for lr in lrs]
                               for opt in optimizers], 100) for name in names}  # NaN: no cell, or all diverged
    finite = np.array(list(tables.values()))
    finite = finite[np.isfinite(finite)]
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0, 100)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    cmap = colormaps["viridis"].with_extremes(bad="0.85")
    common = grid["choice"]["common"]
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
                    mean, std = 100 * cell["val_acc_mean"], 100 * (cell["val_acc_std"] or 0)
                    text = f"{mean:.1f}{star}\n± {std:.1f}" if two_lines else f"{mean:.1f} ± {std:.1f}{star}"
                    shade = (table[i, j] - vmin) / (vmax - vmin)
                    if cell.get("diverged_rounds"):
                        text += f"\n{cell['diverged_rounds']} diverged"
                ax.text(j, i, text, ha="center", va="center", fontsize=MIN_FONT,
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
        ax.spines[:].set_visible(False)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    for ax in axes[max(0, len(names) - ncols):len(names)]:  # the lowest panel of each column
        ax.set_xlabel("Learning rate", fontsize=FONT)
        ax.xaxis.set_tick_params(labelbottom=True)
    if names:
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
    fig = figure(1.3 + 0.5 * max(len(comparisons), 1))
    ax = fig.add_subplot()
    if not comparisons:
        ax.text(0.5, 0.5, "no comparisons in this evaluation", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    ys = np.arange(len(comparisons))[::-1]
    labels, p_labels = [], []
    for y, c in zip(ys, comparisons):
        d, ci = 100 * (c["mean_diff"] or 0.0), c.get("ci95")
        xerr = [[d - 100 * ci[0]], [100 * ci[1] - d]] if ci else None
        ax.errorbar(d, y, xerr=xerr, fmt="o", color=colors.get(c["b"], "black"), ecolor="black", elinewidth=1.2,
                    capsize=3, markersize=6, markeredgecolor="black", markeredgewidth=0.5, zorder=3)
        labels.append(f"{c['b']} − {c['a']}\n{c.get('question', '')}")
        t_p = c.get("t_p_holm", c.get("paired_t_p"))
        w_p = c.get("wilcoxon_p_holm")
        p_labels.append(f"t-test: {stats.pvalue(t_p)}" + (f"\nWilcoxon: {stats.pvalue(w_p)}" if w_p is not None else ""))
    ax.axvline(0, color="0.4", linestyle="--", linewidth=1)
    ax.set_yticks(ys, labels)
    ax.set_ylim(-0.6, len(comparisons) - 0.4)
    right = ax.secondary_yaxis("right")
    right.set_yticks(ys, p_labels)
    right.tick_params(labelsize=MIN_FONT, length=0)
    style(ax, "x", FONT)
    ax.set_xlabel("Difference in test accuracy (percentage points), mean over paired rounds and its 95% CI",
                  fontsize=FONT)
    n = max((c.get("n_pairs", 0) for c in comparisons), default=0)
    ax.set_title(f"Effect on test accuracy: {n} paired rounds\n({preset_name(evaluation)} preset; "
                 f"{_protocol_text(evaluation, protocol)})", fontsize=FONT + 1)
    return fig


# ---------------------------------------------------------------------------------------------
# Pieces of the later studies' figures (lib.seed_study, lib.best)
# ---------------------------------------------------------------------------------------------


def accuracies(entry):
    """Test accuracies (%) of the measured rounds of an entry that has them, else an empty array."""
    acc = nan_array(entry.get("test_acc") or [])
    return 100 * acc[~np.isnan(acc)]


def dots(ax, y, values, color, rng, mean=None, std=None, horizontal=True):
    """Every round as a jittered dot, and the mean +- std as a bar with a diamond."""
    if values.size:
        jitter = y + rng.uniform(-0.18, 0.18, size=values.size)
        xy = (values, jitter) if horizontal else (jitter, values)
        ax.scatter(*xy, s=9, color=color, alpha=0.55, linewidths=0, zorder=2)
        mean = values.mean() if mean is None else mean
        std = (values.std(ddof=1) if values.size > 1 else 0.0) if std is None else std
    if mean is None:
        return
    xy, err = ((mean, y), {"xerr": std}) if horizontal else ((y, mean), {"yerr": std})
    ax.errorbar(*xy, **err, fmt="D", color=color, ecolor="black", elinewidth=1.0, capsize=2.5, markersize=4.5,
                markeredgecolor="black", markeredgewidth=0.5, zorder=3)


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


def save_figures(figures, preset, figures_dir=None, formats=("png", "pdf")):
    """Draw each (name, draw) and save it as `<figures_dir>/<preset>_<name>.<format>` (written
    atomically), one figure at a time. Returns the written paths."""
    folder = Path(figures_dir) if figures_dir is not None else FIGURES_DIR
    paths = []
    for name, draw in figures:
        fig = draw()
        for fmt in formats:
            paths.append(save_figure(fig, folder / f"{get_preset(preset).name}_{name}.{fmt}", dpi=DPI))
    return paths


def draw_all(preset="course", results_dir=None, figures_dir=None, formats=("png", "pdf")):
    """Draw the figures of every study of lib.studies from its results files (save_figures). A later
    study's figures are drawn when its results file exists; a missing grid or evaluation raises
    lib.experiments.ResultsError, naming the command to run."""
    from lib import studies

    return [path for study in studies.STUDIES if study.figures
            for path in save_figures(study.figures(preset, results_dir), preset, figures_dir, formats)]


# ---------------------------------------------------------------------------------------------
# Architecture diagram, drawn from the model itself
# ---------------------------------------------------------------------------------------------


def _layer_text(module):
    """Short label of one layer: 'conv 32@3×3', 'FC 128', 'max-pool 2', 'ReLU' (else its class name)."""
    from torch import nn

    if isinstance(module, nn.Conv2d):
        pad = f" pad {module.padding[0]}" if isinstance(module.padding, tuple) and any(module.padding) else ""
        return f"conv {module.out_channels}@{_shape_text(module.kernel_size)}{pad}"
    if isinstance(module, nn.Linear):
        return f"FC {module.out_features}"
    if isinstance(module, nn.MaxPool2d):
        return f"max-pool {module.kernel_size}"
    return {"Flatten": "flatten"}.get(type(module).__name__, type(module).__name__)


def _shape_text(shape):
    return "×".join(str(s) for s in shape)


def architecture_of(name):
    """The structure of a registered two-branch model (a `branch` shared by both digits or two
    `branches`, then a `head`), read from the model: its layers grouped into blocks (a layer with
    weights and the weight-free layers after it) with their output shapes, how the branch outputs
    reach the head, and whether and from where it returns digit logits (one forward pass, under hooks).

    Returns {"name", "nb_parameters", "shared", "auxiliary", "aux_at_branch_output", "merge",
    "merge_shape", "branch": [blocks], "head": [blocks]}; a block is {"layers": [labels], "shape": "32×6×6"}.
    ValueError for a model of another shape."""
    import torch

    from lib.models import count_parameters, create_model

    model = create_model(name).eval()
    if hasattr(model, "branch") and hasattr(model, "head"):
        shared, branches = True, [model.branch]
    elif hasattr(model, "branches") and len(getattr(model, "branches")) == 2 and hasattr(model, "head"):
        shared, branches = False, list(model.branches)
    else:
        raise ValueError(f"architecture_of draws two-branch models (a `branch` or two `branches`, then a "
                         f"`head`); {name} has neither")

    def leaves(module):
        return [m for m in module.modules() if not any(True for _ in m.children())]

    shapes, branch_out, head_in = {}, [], []

    def record_shape(module, inputs, output):  # returns None: a hook's return value would replace the output
        shapes[id(module)] = tuple(output.shape[1:])

    # the hooks stay on: the model is our own, used for this one forward pass only
    for module in leaves(branches[0]) + leaves(model.head):
        module.register_forward_hook(record_shape)
    for branch in branches:
        branch.register_forward_hook(lambda m, i, o: branch_out.append(o))
    model.head.register_forward_pre_hook(lambda m, i: head_in.append(i[0]))
    x = torch.randn(3, 2, 14, 14, generator=torch.Generator().manual_seed(0))  # (3, 2, 14, 14)
    with torch.no_grad():
        _, digits = model(x)
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
        first, *rest = block["layers"]  # the weight layer alone on the first line, the weight-free ones after
        lines = [first]
        for text in rest:
            if len(lines) > 1 and len(lines[-1]) + len(text) + 2 <= 14:
                lines[-1] += f", {text}"
            else:
                lines.append(text)
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


def architecture_diagram(names=("NetBase", "NetWSAL")):
    """One panel per registered two-branch model, drawn from the model itself (`architecture_of`):
    its blocks and their output shapes, shared or separate branches, where the auxiliary losses attach."""
    archs = [architecture_of(n) for n in names]
    panel = 1.78  # inches per model
    fig = Figure(figsize=(WIDTH, panel * len(archs)))
    for k, arch in enumerate(archs):
        ax = fig.add_axes((0, 1 - (k + 1) / len(archs), 1, 1 / len(archs)))  # data units = inches
        ax.set_xlim(0, WIDTH)
        ax.set_ylim(0, panel)
        parts = ["shared branch" if arch["shared"] else "two separate branches",
                 "main + auxiliary losses" if arch["auxiliary"] else "main loss only"]
        ax.text(0.03, panel - 0.04, f"{arch['name']}: {', '.join(parts)} ({params_text(arch['nb_parameters'])})",
                ha="left", va="top", fontsize=FONT + 1)
        _draw_architecture(ax, arch)
    return fig
