"""A study is one module and one line in lib.studies.STUDIES: a tiny study, made here, shows up in
`python -m lib` (its command, `all`, `summary`), the figures, the report's numbers and the notebook's
loop without any change to another module."""
import shutil
import types

import pytest
from matplotlib.figure import Figure

from lib import experiments, plots, report, studies
from lib.__main__ import main
from lib.stats import mean_std
from lib.study import Command, Study


def tiny_module():
    """What one new module would hold: its results file, its run, rows, figure, section and notebook part."""
    tiny = types.SimpleNamespace()

    def path(preset, results_dir=None):
        return experiments.preset_dir(preset, results_dir) / "tiny.json"

    def command(args):  # the run: here, one number per evaluation round of NetWSAL, halved
        entry = experiments.load_evaluation(args.preset, args.results_dir)["protocols"]["common"]["models"]["NetWSAL"]
        experiments.write_json_atomic(path(args.preset, args.results_dir), {
            "kind": "tiny", "seeds": entry["seeds"], "test_acc": [a / 2 for a in entry["test_acc"]]})
        print("tiny study done")

    def rows(preset, results_dir=None):
        if not path(preset, results_dir).exists():
            return {}
        study = experiments.read_json(path(preset, results_dir))
        mean, std = mean_std(study["test_acc"])
        return {"Tiny": {"mean_acc": mean, "std_acc": std, "mean_err": 1 - mean, "n_rounds": len(study["seeds"]),
                         "nb_parameters": 0, "optimizer": "none", "lr": 0.0}}

    def figures(preset, results_dir=None):
        return [("tiny", lambda: Figure(figsize=(1, 1)))] if path(preset, results_dir).exists() else []

    def section(src):
        study = src.later("tiny", "tiny-study", ("test_acc",))
        return None if study is None else {"acc": report.pm(*mean_std(study["test_acc"]))}

    tiny.STUDY = Study(name="tiny", title="A tiny study", files=(("tiny", "tiny-study"),),
                       commands=(Command("tiny-study", "halve NetWSAL's accuracies", command, in_all=True),),
                       rows=rows, figures=figures, sections=(("tiny", section, ("tiny",)),),
                       notebook=lambda preset, results_dir=None: [f"{len(rows(preset, results_dir))} tiny row"])
    return tiny


@pytest.fixture
def results(quick_study, tmp_path):
    """The quick study's grid and evaluation files (no runs: nothing here trains)."""
    folder = tmp_path / "results"
    (folder / "quick").mkdir(parents=True)
    for name in ("grid.json", "evaluation.json"):
        shutil.copyfile(quick_study[0] / "quick" / name, folder / "quick" / name)
    return folder


def test_a_study_added_in_one_line_is_run_summarised_drawn_and_reported(results, tmp_path, monkeypatch, capsys):
    tiny = tiny_module()
    monkeypatch.setattr(studies, "STUDIES", studies.STUDIES + (tiny.STUDY,))  # the one line in lib/studies.py
    common = ["--preset", "quick", "--results-dir", str(results)]
    assert "Tiny" not in experiments.summary("quick", results)
    assert main(["tiny-study", *common]) == 0 and "tiny study done" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps its lines
    assert "all grid, evaluate, failures, seed-models, best, tiny-study, figures and summary" in listing

    rows = experiments.summary("quick", results)
    assert list(rows)[-1] == "Tiny" and rows["Tiny"]["n_rounds"] == 3
    assert main(["summary", *common]) == 0 and "\nTiny " in capsys.readouterr().out

    paths = plots.draw_all("quick", results_dir=results, figures_dir=tmp_path / "figures", formats=("pdf",))
    assert tmp_path / "figures" / "quick_tiny.pdf" in paths
    src = report.Sources("quick", results, tmp_path / "figures", tmp_path / "build")
    numbers = report.collect(src)
    assert numbers["tiny"] == {"acc": report.pm(rows["Tiny"]["mean_acc"], rows["Tiny"]["std_acc"])}
    assert ("tiny", "tiny-study") in [(f, c) for s in studies.STUDIES for f, c in s.files]
    assert tiny.STUDY.notebook("quick", results) == ["1 tiny row"]


def test_the_registry_keeps_every_command_and_all_s_members():
    commands = [c.name for s in studies.STUDIES for c in s.commands]
    assert commands == ["grid", "evaluate", "failures", "seed-models", "tune", "best", "confirm", "size-study",
                        "aux-study", "error-study"]
    assert [c.name for s in studies.STUDIES for c in s.commands if c.in_all] == [
        "grid", "evaluate", "failures", "seed-models", "best"]


def test_a_preset_without_a_study_setting_cannot_be_made():
    with pytest.raises(TypeError, match="sizes"):
        experiments.Preset("partial", epochs=1, seed_tuning=(1, 1, 1), aux_weights=(0.0,))
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        experiments.get_preset("nope")
