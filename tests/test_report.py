"""The report: built from the results files in the test, and the numbers in the PDF's text equal
those of the results files (formatted here independently of lib/report.py); a missing file is an
error that names the command to run; the architecture diagram is read from the models."""
import json
import re
import shutil
import subprocess
import sys

import pytest
from pypdf import PdfReader

from lib import report
from lib.experiments import PROJECT_ROOT, read_json, run_study, write_json_atomic
from lib.models import count_parameters, create_model, get_model_class, list_models
from lib.plots import architecture_diagram, architecture_of, draw_all

PRESET = "quick"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The quick study into a temporary results folder, its figures, and the report built from them."""
    root = tmp_path_factory.mktemp("report")
    results, figures, build = root / "results", root / "figures", root / "build"
    run_study(PRESET, results_dir=results, progress=False, workers=1)
    draw_all(PRESET, results_dir=results, figures_dir=figures, formats=("pdf",))
    output = root / "out" / "report.pdf"
    code = report.main(["--preset", PRESET, "--results-dir", str(results), "--figures-dir", str(figures),
                        "--build-dir", str(build), "--output", str(output)])
    assert code == 0
    pages = PdfReader(output).pages
    text = "\n".join(page.extract_text() for page in pages)
    text = re.sub(r"(?<=[a-z])-\n(?=[a-z])", "", text)  # words hyphenated at a line end
    return {"root": root, "results": results, "figures": figures, "build": build, "output": output,
            "nb_pages": len(pages), "text": re.sub(r"\s+", " ", text),
            "grid": read_json(results / PRESET / "grid.json"),
            "evaluation": read_json(results / PRESET / "evaluation.json")}


def pm(mean, std, scale=100):
    return f"{scale * mean:.2f} ± {scale * std:.2f}"


def signed(x):
    return f"{100 * x:+.2f}".replace("-", "−")


def test_pdf_has_two_to_four_pages(built):
    assert 2 <= built["nb_pages"] <= 4


def test_accuracies_and_errors_in_the_pdf_equal_the_evaluation(built):
    text = built["text"]
    for protocol, block in built["evaluation"]["protocols"].items():
        for name, entry in block["models"].items():
            assert pm(entry["mean_acc"], entry["std_acc"]) in text, (protocol, name)
            assert pm(entry["mean_err"], entry["std_err"]) in text, (protocol, name)
            assert f"{entry['nb_parameters']:,}" in text


def test_comparisons_in_the_pdf_equal_the_evaluation(built):
    text = built["text"]
    for block in built["evaluation"]["protocols"].values():
        for c in block["comparisons"]:
            lo, hi = c["ci95"]
            assert f"{c['b']} − {c['a']} {c['question']} {signed(c['mean_diff'])} [{signed(lo)}, {signed(hi)}]" in text
            p = c["paired_t_p"]
            assert ("p < 0.001" if p < 0.001 else f"p = {p:.3f}") in text


def test_chosen_settings_rounds_and_pools_in_the_pdf(built):
    text, grid, evaluation = built["text"], built["grid"], built["evaluation"]
    common = grid["choice"]["common"]
    assert f"Common: {common['optimizer']}, lr {common['lr']:g}" in text
    assert f"{common['optimizer']}, learning rate {common['lr']:g}" in text
    for name, own in grid["choice"]["per_model"].items():
        assert f"{name} {own['optimizer']} {own['lr']:g} {100 * own['val_acc_mean']:.2f}" in text  # Table 2
        assert f"{own['optimizer']}, {own['lr']:g}" in text  # Table 3
    preset = evaluation["preset"]
    assert f"{preset['eval_rounds']} rounds each" in text
    assert f"mean ± std over {preset['eval_rounds']} rounds" in text
    assert f"{preset['grid_rounds']} rounds per cell" in text
    assert f"{preset['epochs']} epochs" in text
    assert f"{preset['nb_train']:,} training pairs and {preset['nb_val']:,} validation pairs" in text
    assert f"{preset['nb_test']:,} test pairs" in text
    for split, pool in evaluation["provenance"]["data_pools"].items():
        assert f"{split} {pool['nb_images']:,}" in text
        for name, md5 in pool["md5"].items():
            assert f"{name}: {md5}" in text


def test_published_numbers_are_quoted_from_the_data_file(built):
    text = built["text"]
    published = read_json(report.PUBLISHED)["reports"]
    assert "quoted from their text" in text
    for block in published.values():
        for m in block["models"]:
            assert f"{m['model']}" in text
            assert pm(m["mean"], m["pm"], scale=1) in text


def test_published_000_numbers_agree_with_the_model_registry():
    """The seed models carry their report's numbers too (lib.models): the two must not drift."""
    published = read_json(report.PUBLISHED)["reports"]
    for m in published["000"]["models"]:
        assert get_model_class(m["model"]).published["mean"] == m["mean"]
        assert get_model_class(m["model"]).published["plus_minus"] == m["pm"]
    assert {m["model"] for m in published["002"]["models"]} <= set(list_models())


def test_build_folder_holds_numbers_and_figures(built):
    numbers = json.loads((built["build"] / "numbers.json").read_text())
    assert [name for name, _ in report.SECTIONS if name in numbers] == \
        ["meta", "data", "models", "training", "grid", "results", "published"]  # no seed_models / best file yet
    for path in numbers["figures"].values():
        assert (built["build"] / path).is_file()
    assert (built["build"] / "report.typ").read_text() == (report.REPORT_DIR / "report.typ").read_text()


def test_typst_source_types_no_result():
    """Every result comes from numbers.json: the .typ source holds no decimal number outside
    lengths and sizes of the layout."""
    source = (report.REPORT_DIR / "report.typ").read_text()
    source = re.sub(r"//.*", "", source)  # comments
    source = re.sub(r"\b\d+(\.\d+)?(pt|em|cm|%)", "", source)  # layout lengths and figure widths
    assert re.findall(r"\d+\.\d+", source) == []


def test_optional_section_file_is_noted_not_invented(built, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(built["results"] / PRESET, results / PRESET, ignore=shutil.ignore_patterns("runs"))
    write_json_atomic(results / PRESET / "seed_models.json", {"kind": "seed_models"})
    numbers = report.collect(report.Sources(PRESET, results, built["figures"], tmp_path / "build"))
    assert "seed_models" not in numbers and "results" in numbers
    assert "seed_models.json exists" in capsys.readouterr().err


def test_missing_results_name_the_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lib.report", "--preset", PRESET, "--results-dir", str(tmp_path),
                          "--output", str(tmp_path / "r.pdf")], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert out.returncode == 2
    assert f"python -m lib grid --preset {PRESET}" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "r.pdf").exists()


def test_missing_figures_name_the_command(built, tmp_path, capsys):
    code = report.main(["--preset", PRESET, "--results-dir", str(built["results"]), "--figures-dir",
                        str(tmp_path / "none"), "--build-dir", str(tmp_path / "build"),
                        "--output", str(tmp_path / "r.pdf")])
    assert code == 2
    assert f"python -m lib figures --preset {PRESET} --results-dir {built['results']}" in capsys.readouterr().err
    assert not (tmp_path / "r.pdf").exists()


def test_evaluation_of_another_grid_is_refused(built, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(built["results"] / PRESET, results / PRESET, ignore=shutil.ignore_patterns("runs"))
    grid = read_json(results / PRESET / "grid.json")
    grid["choice"]["common"]["lr"] = 123.0
    write_json_atomic(results / PRESET / "grid.json", grid)
    code = report.main(["--preset", PRESET, "--results-dir", str(results), "--figures-dir", str(built["figures"]),
                        "--build-dir", str(tmp_path / "build"), "--output", str(tmp_path / "r.pdf")])
    assert code == 2
    assert f"python -m lib evaluate --preset {PRESET}" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the diagram


def test_architecture_is_read_from_the_models():
    ws_al, base = architecture_of("NetWSAL"), architecture_of("NetBase")
    assert (ws_al["shared"], ws_al["auxiliary"], ws_al["aux_at_branch_output"]) == (True, True, True)
    assert (base["shared"], base["auxiliary"]) == (False, False)
    for arch in (ws_al, base):
        assert arch["nb_parameters"] == count_parameters(create_model(arch["name"]))
        assert arch["branch"][0]["layers"] == ["conv 32@3×3", "max-pool 2", "ReLU"]
        assert arch["branch"][-1] == {"layers": ["FC 10"], "shape": "10"}
        assert arch["merge"] == ["ReLU", "concat"] and arch["merge_shape"] == "20"
        assert arch["head"][-1] == {"layers": ["FC 2"], "shape": "2"}
    assert architecture_of("NetWS")["shared"] and architecture_of("NetAL")["auxiliary"]


def test_architecture_of_other_shapes_is_refused():
    with pytest.raises(ValueError, match="two-branch"):
        architecture_of("BasicNet1")


def test_architecture_diagram_has_one_panel_per_model():
    fig = architecture_diagram(("NetBase", "NetWS", "NetWSAL"))
    assert len(fig.axes) == 3
    texts = [t.get_text() for t in fig.axes[2].texts]
    assert any(t.startswith("NetWSAL: shared branch, main + auxiliary losses") for t in texts)
    assert sum(t.startswith("auxiliary loss:") for t in texts) == 2
    assert not any("auxiliary loss:" in t for t in (t.get_text() for t in fig.axes[0].texts))
