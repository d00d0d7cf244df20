"""lib.export without running the notebook: the build folder per preset, checks made before the
kernel starts, one-line errors, no path of the building machine, the widget fallback text."""
import shutil
import subprocess
import sys
import time

import nbformat
import pytest

from lib import export
from lib.experiments import PROJECT_ROOT
from lib.export import BUILD_DIR, WIDGET_STATE_MIME


def widget_notebook(text):
    """A one-cell executed notebook: a printed line, then a slider widget (state embedded)."""
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("panel")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text),
                    nbformat.v4.new_output("display_data", data={
                        "text/plain": "IntSlider(value=3)",
                        "application/vnd.jupyter.widget-view+json": {"version_major": 2, "version_minor": 0,
                                                                     "model_id": "m1"}})]
    nb.cells = [cell]
    nb.metadata["widgets"] = {WIDGET_STATE_MIME: {"version_major": 2, "version_minor": 0, "state": {"m1": {
        "model_name": "IntSliderModel", "model_module": "@jupyter-widgets/controls", "model_module_version": "2.0.0",
        "state": {"value": 3}}}}}
    return nb


def test_each_preset_has_its_own_build_folder():
    assert export.default_build_dir("course") == BUILD_DIR
    assert export.default_build_dir(None) == BUILD_DIR
    assert export.default_build_dir("quick") == BUILD_DIR / "quick"


def run_export(*args):
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "lib.export", *args], capture_output=True, text=True,
                         cwd=PROJECT_ROOT, timeout=120)
    return out, time.monotonic() - start


def test_an_unknown_preset_is_one_line_before_any_kernel():
    out, _ = run_export("--preset", "nosuch", "--no-fetch")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: unknown preset 'nosuch'; choose one of quick, course, seed002"]


@pytest.mark.parametrize("option", ["--build-dir", "--figures-dir"])
def test_an_unwritable_output_folder_fails_before_the_notebook_runs(tmp_path, option):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out, seconds = run_export("--preset", "quick", "--no-fetch", option, str(blocker / "out"),
                              *(["--build-dir", str(tmp_path / "build")] if option != "--build-dir" else []))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write the ") and "a_file/out" in lines[0]
    assert not (tmp_path / "build" / export.NOTEBOOK.name).exists()  # the notebook never ran


def test_the_page_shows_no_path_of_the_building_machine(monkeypatch, tmp_path):
    data = tmp_path / "mnist_here"
    monkeypatch.setenv("PYTORCH_DATA_DIR", str(data))
    nb = widget_notebook(f"results: {PROJECT_ROOT / 'results' / 'course'}\nMNIST files: {data / 'MNIST' / 'raw'}\n")
    export.strip_local_paths(nb)
    assert nb.cells[0].outputs[0]["text"] == "results: ./results/course\nMNIST files: $PYTORCH_DATA_DIR/MNIST/raw\n"
    page = export.to_html(nb)
    assert str(PROJECT_ROOT) not in page and str(data) not in page


def test_the_widget_place_says_in_words_when_its_javascript_is_missing(tmp_path):
    """The page copied without static/: the fallback line is in the page and shown (not hidden by the
    rule that hides it once a widget renders)."""
    assets = {"require_js": "static/require.js", "widget_renderer": "static/html-manager/embed-amd.js",
              "versions": {}}
    page = export.to_html(widget_notebook("hello\n"), assets)
    assert page.count(export.WIDGET_FALLBACK) == 1 and ".widget-subarea" in page
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium to render the page")
    probe = ("<script>window.addEventListener('load', () => setTimeout(() => { document.title = 'fallback display: ' + "
             "getComputedStyle(document.querySelector('.ee559-widget-fallback')).display; }, 1000));</script>")
    html = tmp_path / "page.html"  # no static/ beside it
    html.write_text(page.replace("</body>", probe + "</body>"), encoding="utf-8")
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--virtual-time-budget=5000", "--dump-dom", html.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert "<title>fallback display: block</title>" in out.stdout, out.stderr[-2000:]
    assert "widget-subarea" not in out.stdout.split("</style>")[-1]  # nothing rendered
