"""Figures: drawn from results files only, every figure saved as PNG and PDF, the expected artists.

Most tests draw from a synthetic grid/evaluation built by hand in the structure of
lib.experiments (fast, and with the awkward cases: diverged rounds, unmeasured epochs, many
models); one module fixture runs the real `quick` study so that structure cannot drift.
"""
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from lib import plots
from lib.experiments import PROJECT_ROOT, ResultsError, write_json_atomic
from lib.models import list_models

FIGURE_NAMES = ["grid", "boxplot", "overfitting", "curves", "comparisons", "boxplot_per_model",
                "overfitting_per_model", "curves_per_model", "comparisons_per_model"]


# ---------------------------------------------------------------------------------------------
# A synthetic study in the structure of lib.experiments
# ---------------------------------------------------------------------------------------------


def synthetic_study(names, nb_rounds=4, epochs=6, optimizers=("SGD", "Adam", "RMSprop"), lrs=(0.001, 0.01),
                    seed=0):
    """(grid, evaluation) dicts shaped as lib.experiments writes them. The first model has a
    diverged round (NaN from epoch 3 on, test accuracy None), and validation/test are not measured
    at epoch 1 (None for every round), as with a sparse evaluation."""
    rng = np.random.default_rng(seed)
    cells = []
    for m in names:
        for o in optimizers:
            for lr in lrs:
                v = rng.uniform(0.6, 0.95)
                cells.append({"model": m, "optimizer": o, "lr": lr, "run": f"{m}_{o}_lr{lr:g}_x.json", "score": v,
                              "val_acc_mean": v, "val_acc_std": rng.uniform(0, 0.05), "test_acc_mean": v - 0.01,
                              "test_acc_std": 0.02, "diverged_rounds": 0, "wall_time_s": 1.0})
    cells[1].update(val_acc_mean=None, val_acc_std=None, diverged_rounds=2)  # a cell whose rounds all diverged
    cells[2]["diverged_rounds"] = 1
    per_model = {}
    for m in names:
        best = max((c for c in cells if c["model"] == m and c["val_acc_mean"] is not None),
                   key=lambda c: c["val_acc_mean"])
        per_model[m] = {"optimizer": best["optimizer"], "lr": best["lr"], "val_acc_mean": best["val_acc_mean"]}
    common = {"optimizer": optimizers[-1], "lr": lrs[0], "mean_val_acc": 0.8}
    preset = {"name": "quick", "epochs": epochs, "grid_rounds": 2, "eval_rounds": nb_rounds}
    grid = {"kind": "grid", "preset": preset, "seeds": [0, 1], "cells": cells,
            "choice": {"common": common, "per_model": per_model}}

    def entry(i, m, setting):
        curves = {}
        for metric in ("train_loss", "train_acc", "val_acc", "test_acc"):
            start, end = (0.7, 0.05) if metric == "train_loss" else (0.5, 0.9)
            values = np.linspace(start, end, epochs)[None, :] + rng.normal(0, 0.02, (nb_rounds, epochs))
            rows = [[float(v) for v in row] for row in values]
            if metric in ("val_acc", "test_acc"):
                for row in rows:
                    row[0] = None
            if i == 0:
                rows[1][2:] = [None] * (epochs - 2)
            curves[metric] = rows
        test = [row[-1] for row in curves["test_acc"]]
        done = np.array([t for t in test if t is not None])
        return {"model": m, "optimizer": setting["optimizer"], "lr": setting["lr"], "nb_parameters": 1000 * (i + 50),
                "n_rounds": int(done.size), "diverged_rounds": nb_rounds - int(done.size),
                "mean_acc": float(done.mean()), "std_acc": float(done.std(ddof=1)), "mean_err": float(1 - done.mean()),
                "std_err": float(done.std(ddof=1)), "test_acc": test, "curves": curves}

    protocols = {}
    for protocol in plots.PROTOCOLS:
        table = {m: entry(i, m, common if protocol == "common" else per_model[m]) for i, m in enumerate(names)}
        comparisons = []
        for a, b in zip(names, names[1:]):
            d = float(rng.normal(0.02, 0.01))
            comparisons.append({"a": a, "b": b, "n_pairs": nb_rounds - 1, "mean_diff": d, "ci95": [d - 0.01, d + 0.015],
                                "paired_t_p": float(rng.uniform(0, 0.01)), "welch_p": 0.2, "question": f"{a} to {b}"})
        comparisons.append({"a": names[0], "b": names[-1], "n_pairs": 1, "mean_diff": 0.01, "question": "one pair"})
        protocols[protocol] = {"models": table, "comparisons": comparisons}
    evaluation = {"kind": "evaluation", "preset": preset, "seeds": list(range(1000, 1000 + nb_rounds)),
                  "grid_choice": grid["choice"], "protocols": protocols}
    return grid, evaluation


@pytest.fixture(scope="module")
def study():
    return synthetic_study(["NetBase", "NetWS", "NetAL", "NetWSAL", "NotRegistered"])


@pytest.fixture(scope="module")
def real_results(quick_study):
    """The real quick study, trained once per test session (conftest)."""
    return quick_study[0]


def render(fig):
    """Draw the figure completely (layout included), as saving it would."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=40)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# draw_all on the real study
# ---------------------------------------------------------------------------------------------


def test_draw_all_writes_every_figure_from_the_real_study(real_results, tmp_path):
    out = tmp_path / "figures"
    paths = plots.draw_all("quick", results_dir=real_results, figures_dir=out)
    later = [name for name in ("seed_models", "best") if (real_results / "quick" / f"{name}.json").exists()]
    from lib.when_study import AUX, ERRORS, SIZE

    later += [name for s in (SIZE, AUX, ERRORS) for name, _ in s.figures("quick", real_results)]  # when made by another test module
    expected = {out / f"quick_{name}.{fmt}" for name in FIGURE_NAMES + later for fmt in ("png", "pdf")}
    assert set(paths) == expected and len(paths) == len(expected)
    assert set(out.iterdir()) == expected  # no temporary file left behind
    for path in paths:
        head = path.read_bytes()[:8]
        assert path.stat().st_size > 1000
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else head.startswith(b"%PDF")


def test_redrawing_gives_the_same_pdf(real_results, tmp_path):
    from lib.experiments import load_evaluation

    evaluation = load_evaluation("quick", real_results)  # the box plot's jitter is random, but seeded
    first = plots.save_figure(plots.box_plot(evaluation), tmp_path / "a.pdf")
    second = plots.save_figure(plots.box_plot(evaluation), tmp_path / "b.pdf")
    assert first.read_bytes() == second.read_bytes()


def test_real_study_learning_curves_have_one_line_per_round_plus_the_mean(real_results):
    from lib.experiments import load_evaluation

    evaluation = load_evaluation("quick", real_results)
    models = evaluation["protocols"]["common"]["models"]
    nb_rounds = len(next(iter(models.values()))["test_acc"])
    fig = plots.learning_curves(evaluation)
    assert len(fig.axes) == 4
    nb_failed = sum(int(plots.failed_mask(e).sum()) for e in models.values())
    assert nb_rounds >= 1
    for ax in fig.axes:
        assert len(ax.get_lines()) == len(models) + nb_failed  # one median per model, one line per failed round
        assert [line.get_linewidth() for line in ax.get_lines()].count(1.6) == len(models)


def test_missing_results_name_the_command_to_run(tmp_path):
    with pytest.raises(ResultsError, match=r"python -m lib grid --preset quick"):
        plots.draw_all("quick", results_dir=tmp_path, figures_dir=tmp_path / "figures")
    only_grid = tmp_path / "only_grid"
    write_json_atomic(only_grid / "quick" / "grid.json", {"cells": []})
    with pytest.raises(ResultsError, match=r"python -m lib evaluate --preset quick"):
        plots.draw_all("quick", results_dir=only_grid, figures_dir=tmp_path / "figures")
    assert not (tmp_path / "figures").exists()


# ---------------------------------------------------------------------------------------------
# Each figure, on the synthetic study
# ---------------------------------------------------------------------------------------------


def test_learning_curves_medians_bands_and_failed_rounds(study):
    _, evaluation = study
    models = evaluation["protocols"]["common"]["models"]
    fig = plots.learning_curves(evaluation)
    render(fig)
    assert len(fig.axes) == 4
    assert fig.legends and len(fig.legends[0].get_texts()) == len(models) + 1  # the models, 'a failed round'
    first = models["NetBase"]
    failed = plots.failed_mask(first)
    for ax, metric in zip(fig.axes, plots.CURVE_TITLES):
        lines = ax.get_lines()
        medians = [line for line in lines if line.get_linewidth() == 1.6]
        assert len(medians) == len(models) and len(ax.collections) == len(models)  # a band per model
        x = medians[0].get_xdata()
        # epoch 1 of val/test was measured in no round: skipped rather than drawn as an empty point
        assert list(x) == (list(range(2, 7)) if metric in ("val_acc", "test_acc") else list(range(1, 7)))
        scale = 1 if metric == "train_loss" else 100
        values = plots.nan_array(first["curves"][metric], scale)[~failed][:, -1]
        assert medians[0].get_ydata()[-1] == pytest.approx(np.nanmedian(values))
        assert len(lines) == len(models) + sum(int(plots.failed_mask(e).sum()) for e in models.values())
    assert fig.axes[0].get_yscale() == "log"


def test_failed_rounds_are_marked(study):
    _, evaluation = study
    evaluation = json.loads(json.dumps(evaluation))
    entry = evaluation["protocols"]["common"]["models"]["NetWS"]
    for metric in ("val_acc", "test_acc", "train_acc"):
        entry["curves"][metric][0] = [None] + [0.55] * (len(entry["curves"][metric][0]) - 1)
    entry["test_acc"][0] = 0.55
    assert plots.failed_mask(entry).tolist() == [True] + [False] * (len(entry["test_acc"]) - 1)
    fig = plots.box_plot(evaluation, width=plots.HALF)
    render(fig)
    crosses = [c for c in fig.axes[0].collections if isinstance(c, PathCollection) and len(c.get_offsets()) == 1]
    assert any(np.allclose(c.get_offsets()[0, 1], 45.0) for c in crosses)
    assert "1 failed" in fig.axes[0].get_xticklabels()[1].get_text()
    curves = plots.learning_curves(evaluation)
    color = plots.model_colors()["NetWS"]
    dashed = [line for line in curves.axes[2].get_lines() if line.get_linestyle() != "-" and line.get_color() == color]
    assert len(dashed) == 1 and dashed[0].get_ydata()[-1] == pytest.approx(55.0)


def test_box_plot_points_labels_and_errors(study):
    _, evaluation = study
    models = evaluation["protocols"]["common"]["models"]
    fig = plots.box_plot(evaluation)
    render(fig)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in points) == sum(e["n_rounds"] for e in models.values())
    first = models["NetBase"]
    errors = sorted(100 * (1 - a) for a in first["test_acc"] if a is not None)
    assert np.allclose(sorted(points[0].get_offsets()[:, 1]), errors)  # error rate in %, not accuracy
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert all(name in label for name, label in zip(models, labels))
    assert "50,000 params" in labels[0] and "1 diverged" in labels[0]
    assert "4 rounds" in ax.get_title() and "quick" in ax.get_title()
    per_model = plots.box_plot(evaluation, "per_model")
    own = evaluation["protocols"]["per_model"]["models"].values()
    assert all(f"{e['optimizer']}, lr {e['lr']:g}" in t.get_text() for e, t in zip(own, per_model.axes[0].get_xticklabels()))


def test_grid_heatmaps_mark_the_choices_on_validation(study):
    grid, _ = study
    names = list(dict.fromkeys(c["model"] for c in grid["cells"]))
    fig = plots.grid_heatmaps(grid)
    render(fig)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.images]
    assert [ax.get_title() for ax in panels] == names
    assert len(fig.axes) == 6 + 1  # 5 models on a 2 x 3 grid (one hidden) + the shared colour bar
    optimizers = [t.get_text() for t in panels[0].get_yticklabels()]
    lrs = [float(t.get_text()) for t in panels[-1].get_xticklabels()]  # tick labels shown on the lowest row
    for ax, name in zip(panels, names):
        image = [a for a in ax.get_children() if isinstance(a, AxesImage)][0]
        assert image.get_array().shape == (3, 2)
        best = grid["choice"]["per_model"][name]
        boxes = [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]
        assert len(boxes) == 1
        assert boxes[0].get_xy() == (lrs.index(best["lr"]) - 0.5, optimizers.index(best["optimizer"]) - 0.5)
        starred = [t.get_text() for t in ax.texts if "★" in t.get_text()]
        assert len(starred) == 1  # the common setting, the same cell in every panel
        assert ax.texts[[t.get_text() for t in ax.texts].index(starred[0])].get_position() == (
            lrs.index(grid["choice"]["common"]["lr"]), optimizers.index(grid["choice"]["common"]["optimizer"]))
        assert all("±" in t.get_text() or "diverged" in t.get_text() for t in ax.texts)
    assert "validation" in fig.get_suptitle().lower()
    assert not any("test" in t.get_text().lower() and "%" in t.get_text() for ax in panels for t in ax.texts)
    texts = [t.get_text() for t in panels[0].texts]
    assert texts[1] == "all rounds\ndiverged" and texts[2].endswith("\n1 diverged")


def test_comparison_plot_one_interval_per_comparison(study):
    _, evaluation = study
    comparisons = evaluation["protocols"]["common"]["comparisons"]
    fig = plots.comparison_plot(evaluation)
    render(fig)
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == len(comparisons)
    first = bars[0].lines[0].get_xdata()[0]
    assert first == pytest.approx(100 * comparisons[0]["mean_diff"])  # percentage points
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0].startswith(f"{comparisons[0]['b']} − {comparisons[0]['a']}")
    empty = {"protocols": {"common": {"models": {}, "comparisons": []}}, "preset": {"name": "quick"}}
    render(plots.comparison_plot(empty))


@pytest.mark.parametrize("nb_models", [1, 12, 20])
def test_any_number_of_models(nb_models):
    names = (list_models() + [f"Extra{i}" for i in range(20)])[:nb_models]
    grid, evaluation = synthetic_study(names, nb_rounds=3, epochs=3)
    for fig in (plots.grid_heatmaps(grid), plots.box_plot(evaluation), plots.learning_curves(evaluation),
                plots.comparison_plot(evaluation)):
        assert render(fig).startswith(b"\x89PNG")


def test_one_colour_per_model_across_figures(study):
    _, evaluation = study
    colors = plots.model_colors(["NotRegistered"])
    registry = list_models()
    assert list(colors)[:len(registry)] == registry
    assert len(set(colors.values())) == len(colors)  # up to 20 distinct colours
    assert plots.model_colors()["NetWSAL"] == colors["NetWSAL"]
    box = plots.box_plot(evaluation).axes[0]
    curves = plots.learning_curves(evaluation).axes[0]
    names = list(evaluation["protocols"]["common"]["models"])
    k = names.index("NetWSAL")
    box_color = [c for c in box.collections if isinstance(c, PathCollection)][k].get_facecolor()[0][:3]
    curve_color = [line for line in curves.get_lines() if line.get_linewidth() == 1.6][k].get_color()
    assert np.allclose(box_color, colors["NetWSAL"]) and np.allclose(curve_color, colors["NetWSAL"])


def test_import_leaves_the_backend_alone():
    code = "import sys, lib.plots; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
