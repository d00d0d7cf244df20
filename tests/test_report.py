"""The report: built from the results files in the test, and the numbers in the PDF's text equal
those of the results files (formatted here independently of lib/report.py); a missing file is an
error that names the command to run; the architecture diagram is read from the models.

The report is built from the session's quick study (tests/conftest.py `quick_study`) with both
later studies added (seed_models.json, best.json), so every section of the document is exercised."""
import json
import re
import shutil
import subprocess
import sys

import pytest
from pypdf import PdfReader

from lib import report
from lib.best import GOALS, TRACKS, best_path, best_study, blocks_used, confirm, confirmation_path, tried_steps
from lib.experiments import PROJECT_ROOT, ResultsError, read_json, write_json_atomic
from lib.models import count_parameters, create_model, get_model_class, list_models
from lib.best import best_plot
from lib.plots import architecture_diagram, architecture_of, draw_all
from lib.seed_study import seed_models_path, seed_models_plot, seed_models_study

PRESET = "quick"


def add_later_studies(results):
    """seed_models.json, best.json and lib.when_study's files in the session's quick results folder, computed only when no
    other test module has made them yet (their training runs are cached there either way)."""
    if not seed_models_path(PRESET, results).exists():
        seed_models_study(PRESET, results_dir=results, progress=False, workers=1)
    if not best_path(PRESET, results).exists():
        best_study(PRESET, results_dir=results, progress=False, workers=1)
    for track in TRACKS:  # each track's frozen recipe, once, on its own block
        if not confirmation_path(PRESET, results, track).exists():
            confirm(PRESET, results_dir=results, progress=False, workers=1, track=track)
    from lib import when_study

    for name in ("size", "aux_weight", "errors"):
        if not (results / PRESET / f"{name}.json").exists():
            study = {"size": when_study.size_study, "aux_weight": when_study.aux_study, "errors": when_study.error_study}
            study[name](PRESET, results_dir=results, progress=False, workers=1)


@pytest.fixture(scope="module")
def built(quick_study, single_thread, tmp_path_factory):
    """The quick study (with its later studies), its figures, and the report built from them (one
    torch thread: the tiny quick runs are faster so on a busy machine, see conftest)."""
    results = quick_study[0]
    add_later_studies(results)
    root = tmp_path_factory.mktemp("report")
    figures, build = root / "figures", root / "build"
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
            "evaluation": read_json(results / PRESET / "evaluation.json"),
            "seed_models": read_json(results / PRESET / "seed_models.json"),
            "best": read_json(results / PRESET / "best.json"),
            "recipe": read_json(results / PRESET / "best_recipe.json"),
            "confirmation": read_json(results / PRESET / "confirmation.json"),
            "confirmation_open": read_json(results / PRESET / "confirmation_open.json")}


def pm(mean, std, scale=100):
    return f"{scale * mean:.2f} ± {scale * std:.2f}"


def signed(x):
    return f"{100 * x:+.2f}".replace("-", "−")


def unhyphenated(text):
    """Words compared without their hyphens: the fixture cannot tell 're-pair' broken at a line end
    from a word hyphenated by typst, and joins both (numbers use '−', not '-')."""
    return text.replace("-", "")


def appendix_page(path):
    """Index of the page where the appendix starts (its heading is a PDF bookmark), or None."""
    reader = PdfReader(path)

    def walk(items):
        for item in items:
            if isinstance(item, list):
                yield from walk(item)
            else:
                yield item

    for item in walk(reader.outline):
        if item.title.strip().endswith("Appendix"):
            return reader.get_destination_page_number(item)
    return None


def test_main_text_is_at_most_four_pages(built):
    page = appendix_page(built["output"])
    assert page is not None, "no Appendix heading in the PDF's outline"
    assert page <= 4  # pages 0..3 hold the main text; the appendix starts on a new page
    assert built["nb_pages"] > page


def test_committed_report_main_text_is_at_most_four_pages():
    page = appendix_page(report.OUTPUT)
    assert page is not None and page <= 4


def font_sizes(pdf_path):
    """Every font size set in the content of a PDF drawn by matplotlib ('/F1 8 Tf')."""
    reader = PdfReader(pdf_path)
    sizes = []
    for page in reader.pages:
        contents = page.get_contents()
        data = contents.get_data().decode("latin-1") if contents is not None else ""
        for xobject in (page.get("/Resources", {}).get("/XObject") or {}).values():
            data += xobject.get_object().get_data().decode("latin-1")
        sizes += [float(m) for m in re.findall(r"/F\d+ ([\d.]+) Tf", data)]
    return sizes


def test_no_figure_text_prints_below_7_pt(built):
    """Each figure is placed at the width it was drawn at (report/common.typ's `fig`, the only
    `image` of the sources), so its font sizes are its sizes in print: all >= 7 pt."""
    sources = {p.name: p.read_text() for p in report.REPORT_DIR.glob("*.typ")}
    images = [(name, m) for name, text in sources.items() for m in re.findall(r"image\((.*)\)", text)]
    assert images == [("common.typ", "N.figures.at(name).path, width: N.figures.at(name).width * 1in")]
    numbers = json.loads((built["build"] / "numbers.json").read_text())
    for name, figure in numbers["figures"].items():
        path = built["build"] / figure["path"]
        drawn = float(PdfReader(path).pages[0].mediabox.width) / 72
        assert figure["width"] == pytest.approx(drawn, abs=1e-3), name
        assert drawn <= 6.5 + 1e-6, name  # never wider than the text
        sizes = font_sizes(path)
        assert sizes and min(sizes) >= 7, (name, min(sizes))


def test_accuracies_in_the_pdf_equal_the_evaluation(built):
    text = built["text"]
    for protocol, block in built["evaluation"]["protocols"].items():
        for name, entry in block["models"].items():
            assert pm(entry["mean_acc"], entry["std_acc"]) in text, (protocol, name)
            assert f"{entry['nb_parameters']:,}" in text


def test_verdicts_in_the_pdf_are_the_computed_ones(built):
    """Each comparison's row shows the numbers and the verdict lib.stats computes from the results
    file (recomputed here from the per-round accuracies), with and without the failed rounds."""
    from lib import stats
    from lib.experiments import COMPARISONS, paired_family

    text = built["text"]
    for block in built["evaluation"]["protocols"].values():
        again = paired_family(block["models"], COMPARISONS)
        for c, mine in zip(block["comparisons"], again):
            assert c["verdict"] == mine["verdict"] == stats.verdict(mine)
            assert c["without_failed"]["verdict"] == mine["without_failed"]["verdict"]
            lo, hi = c["ci95"]
            row = (f"{c['b']} − {c['a']} {signed(c['mean_diff'])} [{signed(lo)}, {signed(hi)}] "
                   f"{signed(c['median_diff'])} {c['wins']}/{c['ties']}/{c['losses']}")
            assert row in text
            assert f"{report.pvalue(c['wilcoxon_p_holm'])} {c['verdict']}" in text


def test_failed_rounds_in_the_pdf(built):
    text = built["text"]
    for name, entry in built["evaluation"]["protocols"]["common"]["models"].items():
        failed = ", ".join(f"{f['seed']} ({f['reason']})" for f in entry["failed_rounds"]) or "none"
        assert failed in text, name


def test_chosen_settings_rounds_and_pools_in_the_pdf(built):
    text, grid, evaluation = built["text"], built["grid"], built["evaluation"]
    common = grid["choice"]["common"]
    assert f"{common['optimizer']}, learning rate {common['lr']:g}" in text
    for name, own in grid["choice"]["per_model"].items():
        assert f"{name} {own['optimizer']} {own['lr']:g} ({100 * own['val_acc_mean']:.2f})" in text
    preset = evaluation["preset"]
    assert f"{preset['eval_rounds']} new rounds" in text
    assert f"{preset['grid_rounds']} rounds per cell" in text
    assert f"{preset['epochs']} epochs" in text
    assert f"{preset['nb_train']:,} training pairs and {preset['nb_val']:,} validation pairs" in text
    assert f"{preset['nb_test']:,} test pairs" in text
    for split, pool in evaluation["provenance"]["data_pools"].items():
        assert f"{split} {pool['nb_images']:,} images" in text
        for name, md5 in pool["md5"].items():
            assert name in text and md5 in text


def test_published_numbers_are_quoted_from_the_data_file(built):
    text = built["text"]
    published = read_json(report.PUBLISHED)["reports"]
    for block in published.values():
        for m in block["models"]:
            assert f"{m['model']}" in text
            assert pm(m["mean"], m["pm"], scale=1) in text


def test_the_model_registry_quotes_published_json():
    """The registered models carry their report's numbers, read from report/published.json, the one
    file that holds them; every quoted model is registered."""
    published = read_json(report.PUBLISHED)["reports"]
    for block in published.values():
        for m in block["models"]:
            quoted = get_model_class(m["model"]).published
            assert (quoted["mean"], quoted["pm"], quoted["nb_runs"]) == (m["mean"], m["pm"], block["nb_rounds"])
    assert {m["model"] for block in published.values() for m in block["models"]} <= set(list_models())


def test_build_folder_holds_numbers_and_figures(built):
    numbers = json.loads((built["build"] / "numbers.json").read_text())
    assert [name for name, _, _ in report.sections() if name in numbers] == [name for name, _, _ in report.sections()]
    assert {"seed_models", "best"} <= set(numbers["figures"])
    for figure in numbers["figures"].values():
        assert (built["build"] / figure["path"]).is_file()
    for source in report.REPORT_DIR.glob("*.typ"):
        assert (built["build"] / source.name).read_text() == source.read_text()


def test_typst_source_types_no_result():
    """Every result comes from numbers.json: no .typ source holds a decimal number outside
    lengths and sizes of the layout."""
    sources = sorted(report.REPORT_DIR.glob("*.typ"))
    assert {p.name for p in sources} >= {"report.typ", "seed_models.typ", "best.typ"}
    for path in sources:
        source = re.sub(r"//.*", "", path.read_text())  # comments
        source = re.sub(r"\b\d+(\.\d+)?(pt|em|cm|%)", "", source)  # layout lengths and figure widths
        assert re.findall(r"\d+\.\d+", source) == [], path.name


def copy_results(built, tmp_path, without=()):
    """The quick results files (no runs/) in tmp_path/results, less the named files."""
    results = tmp_path / "results"
    shutil.copytree(built["results"] / PRESET, results / PRESET,
                    ignore=shutil.ignore_patterns("runs", *(f"{name}.json" for name in without)))
    return results


def test_later_sections_are_left_out_without_their_files(built, tmp_path):
    results = copy_results(built, tmp_path, without=("seed_models", "best"))
    numbers = report.collect(report.Sources(PRESET, results, built["figures"], tmp_path / "build"))
    assert "seed_models" not in numbers and "best" not in numbers and "results" in numbers


def test_best_before_its_confirmation_shows_the_development_numbers(built, tmp_path):
    results = copy_results(built, tmp_path, without=("confirmation", "confirmation_open"))
    best = report.collect(report.Sources(PRESET, results, built["figures"], tmp_path / "build"))["best"]
    assert best["confirmed"] is False and "blocks_used" not in best
    e = built["best"]["tracks"]["course"]
    assert best["tracks"]["course"]["acc"] == pm(e["mean_acc"], e["std_acc"])


@pytest.mark.parametrize("name, command", [("seed_models", "seed-models"), ("best", "best")])
def test_incomplete_or_foreign_later_study_names_the_command(built, tmp_path, name, command):
    results = copy_results(built, tmp_path)
    src = report.Sources(PRESET, results, built["figures"], tmp_path / "build")
    path = results / PRESET / f"{name}.json"
    write_json_atomic(path, {"kind": name})
    with pytest.raises(ResultsError, match=f"python -m lib {command} --preset {PRESET}"):
        report.collect(src)
    study = dict(built[name], seeds=[s + 1 for s in built[name]["seeds"]])  # other rounds: no pairing
    write_json_atomic(path, study)
    with pytest.raises(ResultsError, match="was evaluated on seeds"):
        report.collect(report.Sources(PRESET, results, built["figures"], tmp_path / "build"))


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


# ----------------------------------------------------------------------------- the later sections


def test_every_seed_architecture_in_the_pdf(built):
    """Table 6: each seed architecture's mean ± std test accuracy, its optimistic maximum over
    epochs, the number its report published (or a dash) and its paired difference with NetWSAL."""
    text, study = built["text"], built["seed_models"]
    for name, e in study["models"].items():
        vs = e["vs_reference"]
        lo, hi = vs["ci95"]
        quoted = get_model_class(name).published
        published = pm(quoted["mean"], quoted["pm"], scale=1) if quoted else "—"
        row = (f"{name} {e['report']} {e['nb_parameters']:,} {e['config']['optimizer']} {e['config']['lr']:g}, "
               f"{e['config']['batch_size']}")
        assert row in text, name
        assert (f"{pm(e['mean_acc'], e['std_acc'])} {pm(e['mean_max_acc_over_epochs'], e['std_max_acc_over_epochs'])} "
                f"{published}") in text, name
        assert f"{signed(vs['mean_diff'])} [{signed(lo)}, {signed(hi)}]" in text, name
    for stage in study["tuning"]:
        assert f"{len(stage['cells'])} candidate" in text
    assert f"{sum(len(s['cells']) for s in study['tuning'])} runs" in text


def test_best_model_tracks_and_tuning_in_the_pdf(built):
    """The tuning table (best_recipe.json: each step's paired validation gain, the lower end of its
    interval, wins/ties/losses), the confirmation block as headline with NetWSAL under both settings
    on the block, the development numbers beside, and the block's seeds and count."""
    text, study, recipe, confirmation = built["text"], built["best"], built["recipe"], built["confirmation"]
    steps = tried_steps(PRESET, built["results"])  # the course track's steps, then the open track's
    assert [r["step"] for r in steps] == [r["step"] for r in study["ablation"]]
    for row in steps:
        assert unhyphenated(row["step"]) in unhyphenated(text)
        vs = row.get("vs_current")
        if vs:
            assert (f"{pm(row['val_acc_mean'], row['val_acc_std'])} {signed(vs['gain_mean'])} {signed(vs['gain_lower'])} "
                    f"{vs['wins']}/{vs['ties']}/{vs['losses']}") in text, row["step"]
    kept = [r["step"] for r in steps[1:] if r["kept"]]
    kept = ", ".join(kept[:-1]) + " and " + kept[-1] if len(kept) > 1 else kept[0] if kept else "no step"
    assert unhyphenated(f"Kept: {kept}.") in unhyphenated(text)
    from lib import stats

    def shown(track_entry, references):
        out = [pm(track_entry["mean_acc"], track_entry["std_acc"])]
        for protocol in ("common", "per_model"):  # NetWSAL under both of its settings, same rounds
            vs = stats.paired(references[protocol]["test_acc"], track_entry["test_acc"])
            lo, hi = vs["ci95"]
            out.append(f"{signed(vs['mean_diff'])} [{signed(lo)}, {signed(hi)}]")
        return " ".join(out)

    protocols = built["evaluation"]["protocols"]
    development = {p: protocols[p]["models"][study["reference"]] for p in ("common", "per_model")}
    e = confirmation["tracks"]["course"]
    assert shown(e, confirmation["references"]) in text  # the headline: the block
    assert shown(study["tracks"]["course"], development) in text  # beside it: development
    assert f"{e['nb_parameters']:,}" in text
    lo, hi = confirmation["seeds"][0], confirmation["seeds"][-1]
    assert f"block {confirmation['block']}, seeds {lo}–{hi}" in text
    second = built["confirmation_open"]  # the open track's recipe, on the next block
    lo, hi = second["seeds"][0], second["seeds"][-1]
    assert second["block"] == 1 and f"block {second['block']}, seeds {lo}–{hi}" in text
    assert shown(second["tracks"]["open"], second["references"]) in text
    assert blocks_used(PRESET, built["results"]) == 2 and "Confirmation blocks used so far: 2" in text
    assert recipe["recipe_sha256"][:12] in text
    reached = e["mean_acc"] >= GOALS["course"]
    assert f"{100 * GOALS['course']:.1f} % on the confirmation block, {'was reached' if reached else 'was not reached'}" \
        in text


def test_best_headline_references_are_the_blocks(built):
    """Both NetWSAL references of the headline are the confirmation block's, paired over its rounds."""
    numbers = json.loads((built["build"] / "numbers.json").read_text())["best"]
    assert numbers["confirmed"] and numbers["blocks_used"] == len(built["confirmation_open"]["blocks"]) == 2
    vs = numbers["tracks"]["course"]["vs_both"]
    assert set(vs) == {"common", "per_model"}
    for protocol, c in vs.items():
        assert c["n_pairs"] == len(built["confirmation"]["seeds"])
        assert c["acc"] == pm(built["confirmation"]["references"][protocol]["mean_acc"],
                              built["confirmation"]["references"][protocol]["std_acc"])
    assert numbers["open_tried"]
    vs = numbers["tracks"]["open"]["vs_both"]  # the open track: against NetWSAL on its own block
    for protocol, c in vs.items():
        assert c["acc"] == pm(built["confirmation_open"]["references"][protocol]["mean_acc"],
                              built["confirmation_open"]["references"][protocol]["std_acc"])


def test_best_published_results_are_quoted_and_compared_from_the_numbers(built):
    """The best published results come from report/published.json; whether a track is above or
    below each, within its spread or not, is computed from the numbers (numbers.json), never typed.
    (The PDF checks are short strings: the paragraph may run across a page and the floats on it.)"""
    text = built["text"]  # the headline: each track's confirmation block
    tracks = {"course": built["confirmation"]["tracks"]["course"], "open": built["confirmation_open"]["tracks"]["open"]}
    numbers = json.loads((built["build"] / "numbers.json").read_text())["best"]
    quoted = read_json(report.PUBLISHED)["best_for_protocol"]
    assert "Ours never does" in text
    for p in quoted["results"]:
        assert f"about {p['mean']:.1f} ± {p['pm']:.1f} %" in text
    for track, e in tracks.items():
        if track != "course" and e["config"] == tracks["course"]["config"]:
            continue  # the same recipe as the course track: one sentence
        for p, shown in zip(quoted["results"], numbers["tracks"][track]["published"]):
            diff = 100 * e["mean_acc"] - p["mean"]
            assert (shown["higher"], shown["within_spread"]) == (diff > 0, abs(diff) <= p["pm"])
            # "<diff> pp above/below", where a float (a table placed at the page break) may sit between
            word = "above" if diff > 0 else "below"
            assert re.search(rf"{abs(diff):.2f} (pp {word}|.{{0,8000}}? pp {word})", text), (track, p["label"])
        assert numbers["tracks"][track]["above_all_published"] == all(
            100 * e["mean_acc"] > p["mean"] for p in quoted["results"])


def test_later_figures_are_drawn_from_their_files(built):
    assert (built["figures"] / f"{PRESET}_seed_models.pdf").is_file()
    assert (built["figures"] / f"{PRESET}_best.pdf").is_file()
    fig = seed_models_plot(built["seed_models"], built["evaluation"])
    nb_rows = len(built["seed_models"]["main_models"]) + len(built["seed_models"]["models"])
    assert len(fig.axes[0].containers) == nb_rows  # one mean ± std bar per architecture
    assert [t.get_text().split(" (")[0] for t in fig.axes[0].get_yticklabels()] == \
        list(built["seed_models"]["main_models"]) + list(built["seed_models"]["models"])
    confirmations = {"course": built["confirmation"], "open": built["confirmation_open"]}
    steps = tried_steps(PRESET, built["results"])
    fig = best_plot(built["best"], built["evaluation"], confirmations, steps)
    left, right = fig.axes[:2]
    assert len(left.containers) == len(steps) - 1  # every step after the start
    assert len(right.containers) == 2 * (2 + 1)  # per block: NetWSAL under both settings, then its track
    assert [t.get_text() for t in right.get_xticklabels()][-1] == "open track"  # slanted, one line
    fig = best_plot(built["best"], built["evaluation"], {"course": built["confirmation"]})  # one block
    assert len(fig.axes[1].containers) == 2 + 1


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
