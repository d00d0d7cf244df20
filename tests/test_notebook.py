"""The main notebook: it runs end to end (quick preset, temporary results), its parameters cell is
tagged, its inline architectures compute what the library's do, and its exported HTML renders the widgets.

The end-to-end run uses nbclient in a real kernel, then trains once with the retrain panel in that
kernel, so the widget updates sent from the panel's background thread are checked to reach the
front end (the widget state nbclient records from the messages).
"""
import copy
import shutil
import subprocess

import nbformat
import pytest
from nbclient import NotebookClient

from lib import models
from lib.experiments import MODELS_002
from lib.export import BUILD_DIR, NOTEBOOK, WIDGET_STATE_MIME, fetch_assets, notebook_environment, to_html

TIMEOUT = 600  # seconds per cell


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def tagged(nb, tag):
    return [c for c in nb.cells if tag in c.metadata.get("tags", [])]


# ---------------------------------------------------------------------------------------------
# Structure, without a kernel
# ---------------------------------------------------------------------------------------------


def test_parameters_cell():
    nb = read_notebook()
    nbformat.validate(nb)
    cells = tagged(nb, "parameters")
    assert len(cells) == 1 and cells[0].cell_type == "code"
    source = cells[0].source
    assert 'PRESET = os.environ.get("EE559_PRESET", "course")' in source
    assert "FORCE = False" in source and "EE559_RESULTS_DIR" in source
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code is cells[0]  # parameters come first, so a runner can override them


def test_notebook_is_committed_without_outputs():
    """The committed notebook carries no outputs (they are built by `make run` into build/)."""
    for cell in read_notebook().cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


def test_inline_architectures_are_the_library_ones():
    """The notebook's class cell, run on its own, writes the four 002 models as plain nn.Modules
    that compute what lib.models' classes compute (names, parameter shapes, initial weights,
    outputs): `model_spec` finds each to be the library's model, so the notebook's grid search and
    evaluation hit the committed runs (tests/test_inline_models.py: a changed class trains as itself)."""
    cells = tagged(read_notebook(), "inline-models")
    assert cells, "no cell tagged inline-models"
    namespace = {}
    for cell in cells:
        exec(compile(cell.source, "<notebook inline-models cell>", "exec"), namespace)
    assert [cls.__name__ for cls in namespace["INLINE_MODELS"]] == list(MODELS_002)
    for name in MODELS_002:
        inline, library = namespace[name], getattr(models, name)
        assert not issubclass(inline, models.Net002)  # written in the cell, not a subclass of the library's
        assert models.model_spec(inline) == (name, "")
        for attribute in ("weight_sharing", "auxiliary"):
            assert getattr(inline, attribute) == getattr(library, attribute), (name, attribute)
        shapes = [{k: v.shape for k, v in cls().state_dict().items()} for cls in (inline, library)]
        assert shapes[0] == shapes[1]


# ---------------------------------------------------------------------------------------------
# The notebook in a kernel
# ---------------------------------------------------------------------------------------------

PANEL_CELL = """
print("trainings before the click:", panel.nb_trainings)
panel.epochs.value, panel.rounds.value, panel.nb_train.value, panel.batch_size.value = 1, 1, 100, 25
assert panel.train()
assert panel.wait(300)
print(panel.message.value)
"""


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook run in a fresh kernel (quick preset, empty temporary results and figures folders),
    then one extra cell that trains with the panel; (executed notebook, temporary folder)."""
    tmp = tmp_path_factory.mktemp("notebook")
    nb = read_notebook()
    client = NotebookClient(nb, timeout=TIMEOUT, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    with notebook_environment("quick", tmp / "results", tmp / "figures"), client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)  # raises CellExecutionError on the first failing cell
        nb.cells.append(nbformat.v4.new_code_cell(PANEL_CELL))
        client.execute_cell(nb.cells[-1], len(nb.cells) - 1)
        client.set_widgets_metadata()
    return nb, tmp


def test_notebook_runs_end_to_end(executed):
    nb, tmp = executed
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert (tmp / "results" / "quick" / "grid.json").exists() and (tmp / "results" / "quick" / "evaluation.json").exists()
    assert (tmp / "figures" / "quick_boxplot.png").exists() and (tmp / "figures" / "sample_pairs.png").exists()
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 5  # sample pairs, grid, box plot, curves, comparisons
    assert WIDGET_STATE_MIME in nb.metadata.get("widgets", {})


def test_panel_is_built_not_trained(executed):
    """The panel cell only builds the panel: it shows the widget, and nothing trained before the
    extra cell clicked Train."""
    nb, _ = executed
    panel_cell = nb.cells[-2]
    assert "RetrainPanel(" in panel_cell.source
    views = [o for o in panel_cell.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 1
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    assert "trainings before the click: 0" in printed


def test_panel_trains_in_a_real_kernel(executed):
    """Updates sent from the panel's training thread reach the front end: the recorded state of its
    progress bar is at the end, and its message gives the test accuracy."""
    nb, _ = executed
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    assert "test accuracy" in printed
    state = nb.metadata.widgets[WIDGET_STATE_MIME]["state"]  # what the exported HTML embeds
    progress = [m["state"] for m in state.values() if m["model_name"] == "IntProgressModel"]
    assert any(s["value"] == s["max"] == 1 and s["bar_style"] == "success" for s in progress)
    messages = [m["state"]["value"] for m in state.values() if m["model_name"] == "HTMLModel"]
    assert any("test accuracy" in v for v in messages)


def test_exported_html_renders_the_widgets_offline(executed, tmp_path):
    """The HTML page, with require.js and the widget renderer served beside it, shows the panel's
    sliders in a headless browser without network (skipped without chromium or the JavaScript)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium to render the page")
    assets = fetch_assets(BUILD_DIR / "static")
    if assets is None:
        pytest.skip("require.js and the widget renderer could not be fetched (npm or network missing)")
    nb, _ = executed
    page = tmp_path / "page.html"
    page.write_text(to_html(nb, assets), encoding="utf-8")
    (tmp_path / "static").symlink_to(BUILD_DIR / "static")
    assert WIDGET_STATE_MIME in page.read_text(encoding="utf-8")
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--virtual-time-budget=20000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=180)
    dom = out.stdout
    assert "widget-slider" in dom and "widget-dropdown" in dom and "widget-image" in dom, out.stderr[-2000:]
    assert "Retrain a model" in dom
    assert "cdn.jsdelivr.net" not in dom and "unpkg.com" not in dom


def test_exported_page_hides_the_builder_paths_and_the_fallback_once_rendered(executed, tmp_path):
    """The real page: no absolute path of this machine; with the JavaScript beside it the widgets
    render and the fallback line (shown when they cannot) is hidden."""
    from lib.export import WIDGET_FALLBACK, strip_local_paths
    from lib.experiments import PROJECT_ROOT

    nb, _ = executed
    page = to_html(strip_local_paths(copy.deepcopy(nb)), None)
    assert str(PROJECT_ROOT) not in page and WIDGET_FALLBACK in page
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assets = fetch_assets(BUILD_DIR / "static") if browser else None
    if assets is None:
        pytest.skip("no chromium, or no widget JavaScript (npm or network missing)")
    probe = ("<script>window.addEventListener('load', () => setTimeout(() => { document.title = 'fallback: ' + "
             "getComputedStyle(document.querySelector('.ee559-widget-fallback')).display; }, 5000));</script>")
    html = tmp_path / "page.html"
    html.write_text(to_html(nb, assets).replace("</body>", probe + "</body>"), encoding="utf-8")
    (tmp_path / "static").symlink_to(BUILD_DIR / "static")
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--virtual-time-budget=20000", "--dump-dom", html.as_uri()],
                         capture_output=True, text=True, timeout=180)
    assert "widget-slider" in out.stdout and "<title>fallback: none</title>" in out.stdout, out.stderr[-2000:]
