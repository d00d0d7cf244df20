"""The training-set size, auxiliary-weight and error studies (lib.when_study) on the quick preset."""
import numpy as np
import pytest

from lib import experiments, plots, when_study as W
from lib.__main__ import main

QUICK = experiments.get_preset("quick")
WHEN = (W.SIZE, W.AUX, W.ERRORS)


@pytest.fixture(scope="module")
def studies(quick_study, tmp_path_factory):
    """The three studies in a copy of the session's quick grid and evaluation (with their runs, so the
    evaluation's runs are reused), leaving the session's folder to the other tests."""
    import shutil

    results = tmp_path_factory.mktemp("when_results")
    source = quick_study[0] / "quick"
    shutil.copytree(source / "runs", results / "quick" / "runs")
    for name in ("grid.json", "evaluation.json"):
        shutil.copyfile(source / name, results / "quick" / name)
    figures = tmp_path_factory.mktemp("when_figures")
    size = W.size_study("quick", results_dir=results, progress=False, workers=1)
    aux = W.aux_study("quick", results_dir=results, progress=False, workers=1)
    errors = W.error_study("quick", results_dir=results, progress=False, workers=1)
    return results, figures, size, aux, errors


def test_size_study_pairs_every_model_on_the_evaluation_rounds(studies):
    results, _, size, _, _ = studies
    assert [s["nb_train"] for s in size["sizes"]] == sorted(QUICK.sizes)
    common = experiments.load_grid("quick", results)["choice"]["common"]
    assert (size["setting"]["optimizer"], size["setting"]["lr"]) == (common["optimizer"], common["lr"])
    for s in size["sizes"]:
        assert list(s["models"]) == list(experiments.MODELS_002)
        for entry in s["models"].values():
            assert entry["seeds"] == QUICK.eval_seeds and len(entry["test_acc"]) == QUICK.eval_rounds
        assert [(c["a"], c["b"]) for c in s["comparisons"]] == [(a, b) for a, b, _ in W.SIZE_CONTRASTS]
        # the factorial's effects, recomputed per round from the test accuracies
        a = {m: np.array(s["models"][m]["test_acc"]) for m in experiments.MODELS_002}
        ws = ((a["NetWS"] + a["NetWSAL"]) - (a["NetBase"] + a["NetAL"])) / 2
        inter = (a["NetWSAL"] - a["NetAL"]) - (a["NetWS"] - a["NetBase"])
        effects = {f["effect"]: f for f in s["factorial"]}
        assert effects["WS main effect"]["mean_diff"] == pytest.approx(ws.mean(), abs=1e-9)
        assert effects["interaction"]["mean_diff"] == pytest.approx(inter.mean(), abs=1e-9)
        assert all("verdict" in f for f in s["factorial"])


def test_size_study_reuses_the_evaluation_runs_at_the_preset_size(studies):
    results, _, size, _, _ = studies
    evaluation = experiments.load_evaluation("quick", results)["protocols"]["common"]["models"]
    at_preset = next(s for s in size["sizes"] if s["nb_train"] == QUICK.nb_train)
    for m, entry in at_preset["models"].items():
        assert entry["run"] == evaluation[m]["run"] and entry["test_acc"] == evaluation[m]["test_acc"]


def test_a_size_run_alone_keeps_the_sizes_already_in_the_file(studies):
    """`--sizes N` adds N to size.json; the sizes it already holds stay (read from the cache, not retrained)."""
    results, _, size, _, _ = studies
    runs = set((results / "quick" / "runs").iterdir())
    again = W.size_study("quick", sizes=[QUICK.sizes[0]], results_dir=results, progress=False, workers=1)
    assert [s["nb_train"] for s in again["sizes"]] == [s["nb_train"] for s in size["sizes"]]
    assert set((results / "quick" / "runs").iterdir()) == runs


def test_the_test_pairs_do_not_depend_on_the_training_size():
    from lib.data import make_round_data

    small, large = (make_round_data(1000, n, 100, 100).test for n in (50, 4000))
    assert (small.classes == large.classes).all() and (small.input == large.input).all()


def test_aux_study_chooses_on_validation_and_compares_with_weight_zero(studies):
    _, _, _, aux, _ = studies
    assert aux["weights"] == list(QUICK.aux_weights)
    for m, block in aux["models"].items():
        assert [r["aux_weight"] for r in block["rows"]] == aux["weights"]
        best = max(block["rows"], key=lambda r: r["score"])
        assert block["chosen_weight"] == best["aux_weight"]
        assert block["rows"][0]["digit_head_trained"] is False
        assert [c["a"] for c in block["versus_zero"]] == ["w=0"] * (len(aux["weights"]) - 1)


def test_error_study_counts_agree_with_training(studies):
    _, _, _, _, errors = studies
    assert list(errors["models"]) == list(W.ERROR_MODELS)  # no best.json in the quick folder
    for e in errors["models"].values():
        pairs, correct = np.array(e["pairs"]), np.array(e["pairs_correct"])
        assert pairs.sum() == QUICK.eval_rounds * QUICK.nb_test
        assert correct.sum() / pairs.sum() == pytest.approx(np.mean(e["test_acc"]), abs=1e-6)
        assert np.array(e["confusion"]).sum() == 2 * pairs.sum()
        # the plain per-round models give the accuracies measured while training
        assert e["max_abs_difference_with_training"] < 0.02
        assert len(e["gallery"]) <= W.GALLERY and all(g["predicted"] != g["target"] for g in e["gallery"])
    assert np.array(errors["models"]["NetWSAL"]["filters"]).ndim == 4


def test_figures_and_command_line(studies, capsys):
    results, figures, *_ = studies
    paths = plots.save_figures([f for s in WHEN for f in s.figures("quick", results)], "quick", figures, ("png",))
    assert {p.name for p in paths} == {f"quick_{n}.png" for n in ("size_accuracy", "size_effects", "aux_weight",
                                                                   "error_matrices", "error_gallery")}
    assert main(["aux-study", "--preset", "quick", "--results-dir", str(results), "--figures", str(figures)]) == 0
    assert "(chosen)" in capsys.readouterr().out


def test_no_figure_text_below_the_minimum(studies):
    from matplotlib.text import Text

    from lib.plots import MIN_FONT

    results, *_ = studies
    for _, draw in (f for s in WHEN for f in s.figures("quick", results)):
        fig = draw()
        fig.canvas.draw() if hasattr(fig.canvas, "draw") else None
        sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_text()]
        assert min(sizes) >= MIN_FONT


def test_missing_results_name_the_command(tmp_path):
    with pytest.raises(experiments.ResultsError, match="size-study"):
        W.load_size("quick", tmp_path)
    assert [s.figures("quick", tmp_path) for s in WHEN] == [[], [], []]


def test_report_sections_and_build(studies, tmp_path):
    from pypdf import PdfReader

    from lib import plots, report

    results, figures, size, aux, errors = studies
    plots.draw_all("quick", results_dir=results, figures_dir=figures, formats=("pdf",))
    src = report.Sources("quick", results, figures, tmp_path / "build")
    numbers = report.collect(src)
    assert numbers["size"]["sizes"] == [s["nb_train"] for s in size["sizes"]]
    for m, block in aux["models"].items():
        assert numbers["aux_weight"]["models"][m]["chosen"]["weight"] == f"{block['chosen_weight']:g}"
    assert numbers["errors"]["names"] == list(errors["models"])
    output = report.build("quick", results_dir=results, figures_dir=figures, output=tmp_path / "r.pdf",
                          build_dir=tmp_path / "build")
    text = " ".join(page.extract_text() for page in PdfReader(output).pages)
    assert "When do they help?" in text and "Auxiliary weight" in text and "What the networks get wrong" in text


def test_notebook_parts_say_what_is_missing(studies, tmp_path):
    results, *_ = studies
    for study, what in zip(WHEN, ("training-set size", "auxiliary-weight", "error")):
        command = study.commands[0].name
        assert study.notebook("quick", tmp_path) == [
            f"No {what} results for this preset yet: `python -m lib {command} --preset quick`."]
    parts = [p for s in WHEN for p in s.notebook("quick", results)]
    assert sum(isinstance(p, str) for p in parts) == 3 and len(parts) == 8  # a table and the figures of each
