"""Execute the main notebook headless and export it to HTML that works offline (`make run`).

    python -m lib.export                     # preset course: build/<notebook>.ipynb and .html
    python -m lib.export --preset quick --results-dir /tmp/r --figures-dir /tmp/f   # into build/quick/

The notebook runs in a fresh kernel (nbclient) with EE559_PRESET / EE559_RESULTS_DIR /
EE559_FIGURES_DIR set for it, the state of its widgets is saved into the executed notebook, and
nbconvert's HTML exporter writes the page with that state embedded
(`application/vnd.jupyter.widget-state+json`), so the retrain panel renders without a kernel.

nbconvert's page loads require.js and the widget renderer (@jupyter-widgets/html-manager,
embed-amd.js) from CDNs. To open without internet, this module fetches both at build time with
`npm pack` into build/static/ (the html-manager version range comes from the installed ipywidgets)
and points the page at those copies; nothing third-party is committed. It also leaves MathJax out
of the page (the notebook has no formulas, and a blocking script from an unreachable CDN can stall
the page). Without npm or network it falls back to the CDN URLs, with a warning. Where the widget
JavaScript cannot load (the page copied without static/), each widget's place says so in words.

The page shows no path of the machine that built it: absolute paths in the outputs are written
relative to the project (or as $PYTORCH_DATA_DIR, ~).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from unittest import mock

from ipywidgets import _version as ipywidgets_version

from lib.experiments import DEFAULT_PRESET, PROJECT_ROOT, ResultsError, check_writable, get_preset

NOTEBOOK = PROJECT_ROOT / "Proj1_main_code_and_grid_searches.ipynb"
BUILD_DIR = PROJECT_ROOT / "build"
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
REQUIREJS_SPEC = "requirejs@2"
HTML_MANAGER_RANGE = ipywidgets_version.__html_manager_version__  # the widget renderer of the installed ipywidgets
HTML_MANAGER_SPEC = f"@jupyter-widgets/html-manager@{HTML_MANAGER_RANGE}"
FONT_SUFFIXES = (".woff", ".woff2", ".ttf", ".eot", ".svg")  # the widget CSS's icon fonts, beside embed-amd.js


def _npm_unpack(spec, tmp, dest, pick):
    """Download the tarball of `spec` into `tmp` with `npm pack` and copy the files that `pick(names in
    the tarball)` maps ({path inside the tarball: path under dest}); returns the package's version."""
    out = subprocess.run(["npm", "pack", spec, "--json", "--pack-destination", str(tmp)], capture_output=True,
                         text=True, timeout=300, check=True)
    info = json.loads(out.stdout)[0]
    with tarfile.open(Path(tmp) / info["filename"]) as tar:
        for inner, outer in pick(tar.getnames()).items():
            source = tar.extractfile(inner)
            if source is None:
                raise FileNotFoundError(f"{inner} is not a file in {info['filename']}")
            target = Path(dest) / outer
            target.parent.mkdir(parents=True, exist_ok=True)
            with source, open(target, "wb") as f:
                shutil.copyfileobj(source, f)
    return info["version"]


def fetch_assets(static_dir):
    """require.js and the widget renderer in `static_dir` (fetched once, reused after).

    Returns {"require_js": path, "widget_renderer": path, "versions": {...}} with paths relative to
    static_dir's parent, or None (with a warning printed) when they cannot be fetched."""
    static_dir = Path(static_dir)
    require_js, renderer = Path("require.js"), Path("html-manager") / "embed-amd.js"
    versions_file = static_dir / "VERSIONS.json"
    if not ((static_dir / require_js).is_file() and (static_dir / renderer).is_file() and versions_file.is_file()
            and json.loads(versions_file.read_text()).get("html_manager_spec") == HTML_MANAGER_SPEC):
        if shutil.which("npm") is None:
            print("WARNING: npm not found: the exported HTML loads require.js and the widget renderer from CDNs "
                  "and shows no widgets offline", file=sys.stderr)
            return None
        try:
            with tempfile.TemporaryDirectory() as tmp:
                fresh = Path(tmp) / "static"
                rjs_version = _npm_unpack(REQUIREJS_SPEC, tmp, fresh, lambda names: {"package/require.js": require_js})
                hm_version = _npm_unpack(HTML_MANAGER_SPEC, tmp, fresh, lambda names: {
                    "package/dist/embed-amd.js": renderer,
                    **{n: renderer.parent / Path(n).name for n in names
                       if n.startswith("package/dist/") and n.endswith(FONT_SUFFIXES)}})
                versions = {"requirejs": rjs_version, "@jupyter-widgets/html-manager": hm_version,
                            "html_manager_spec": HTML_MANAGER_SPEC, "from": "npm pack"}
                (fresh / "VERSIONS.json").write_text(json.dumps(versions, indent=1))
                if static_dir.exists():
                    shutil.rmtree(static_dir)
                static_dir.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(fresh), static_dir)
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError, tarfile.TarError) as error:
            detail = str(getattr(error, "stderr", None) or error)
            detail = " ".join(line for line in detail.splitlines() if not line.startswith("npm warn"))[:300]
            print(f"WARNING: could not fetch require.js and the widget renderer with npm ({detail}): "
                  "the exported HTML loads them from CDNs and shows no widgets offline", file=sys.stderr)
            return None
    base = Path(static_dir.name)
    return {"require_js": (base / require_js).as_posix(), "widget_renderer": (base / renderer).as_posix(),
            "versions": json.loads(versions_file.read_text())}


def notebook_environment(preset=None, results_dir=None, figures_dir=None):
    """Set EE559_PRESET / EE559_RESULTS_DIR / EE559_FIGURES_DIR (those given) for kernels started
    inside the block, which inherit this process's environment; the environment is restored afterwards."""
    overrides = {"EE559_PRESET": preset, "EE559_RESULTS_DIR": results_dir, "EE559_FIGURES_DIR": figures_dir}
    return mock.patch.dict(os.environ, {k: str(v) for k, v in overrides.items() if v is not None})


WIDGET_FALLBACK = ("Interactive widget (the retrain panel). Its JavaScript did not load: keep the static/ folder "
                   "beside this page, or open the notebook in JupyterLab to use it.")
_FALLBACK_STYLE = """<style>
.ee559-widget-fallback { padding: 0.6em 1em; border: 1px dashed #999; color: #555; font-style: italic; }
.jupyter-widgets:has(> .widget-subarea) > .ee559-widget-fallback { display: none; }
</style>
"""


def strip_local_paths(nb):
    """Rewrite the absolute paths of this machine in the text outputs of `nb` (in place): the data
    folder, the project and the home folder, longest first."""
    data_dir = os.environ.get("PYTORCH_DATA_DIR")
    pairs = [(str(Path(data_dir).expanduser().resolve()), "$PYTORCH_DATA_DIR")] if data_dir else []
    pairs += [(str(PROJECT_ROOT), "."), (str(Path.home()), "~")]
    pairs = sorted((p for p in pairs if len(p[0]) > 1), key=lambda p: -len(p[0]))

    def clean(text):
        for prefix, replacement in pairs:
            text = text.replace(prefix, replacement)
        return text

    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                output["text"] = clean(output["text"])
            if "traceback" in output:
                output["traceback"] = [clean(line) for line in output["traceback"]]
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    output["data"][mime] = clean(value)
    return nb


def default_build_dir(preset):
    """build/ for the course preset (the committed results), build/<preset>/ for the others, so
    that `make run PRESET=quick` does not overwrite the course's page."""
    name = get_preset(preset or DEFAULT_PRESET).name
    return BUILD_DIR if name == DEFAULT_PRESET else BUILD_DIR / name


def to_html(nb, assets=None):
    """The HTML page of an executed notebook; with `assets` (from fetch_assets) it loads require.js and
    the widget renderer from those local copies and leaves MathJax out."""
    from nbconvert import HTMLExporter

    options = {"template_name": "lab", "html_manager_semver_range": HTML_MANAGER_RANGE}  # the CDN case
    if assets is not None:
        options.update(require_js_url=assets["require_js"], widget_renderer_url=assets["widget_renderer"],
                       mathjax_url="")
    body, _ = HTMLExporter(**options).from_notebook_node(nb)
    # a visible line of text in each widget's place, hidden once the widget renders (the renderer
    # inserts a .widget-subarea beside it)
    body = re.sub(r'(<div class="jupyter-widgets jp-OutputArea-output"[^>]*>)',
                  lambda m: f'{m.group(1)}\n<div class="ee559-widget-fallback">{WIDGET_FALLBACK}</div>', body)
    return body.replace("</head>", _FALLBACK_STYLE + "</head>", 1)


def export(notebook=NOTEBOOK, build_dir=None, preset=None, results_dir=None, figures_dir=None, timeout=600,
           fetch=True):
    """Execute `notebook`, write it and its HTML page into `build_dir` (default: default_build_dir);
    returns (ipynb path, html path). The preset and the output folders are checked first, so a bad
    one fails at once rather than after the notebook ran."""
    import nbformat
    from nbclient import NotebookClient

    if preset is not None:
        get_preset(preset)
    notebook = Path(notebook)
    build_dir = Path(build_dir) if build_dir is not None else default_build_dir(preset)
    check_writable(build_dir, "exported notebook")
    if figures_dir is not None:
        check_writable(figures_dir, "figures")
    assets = fetch_assets(build_dir / "static") if fetch else None
    nb = nbformat.read(notebook, as_version=4)
    executed = build_dir / notebook.name
    start = time.perf_counter()
    try:  # every cell, in a fresh kernel working in the project; the widget state goes into the metadata
        with notebook_environment(preset, results_dir, figures_dir):
            NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                           resources={"metadata": {"path": str(PROJECT_ROOT)}}).execute()
    finally:  # a failed run is kept too, with the outputs up to the failing cell
        nbformat.write(strip_local_paths(nb), executed)
    seconds = time.perf_counter() - start
    page = to_html(nb, assets)
    if WIDGET_STATE_MIME not in page:
        raise RuntimeError(f"the exported HTML holds no widget state ({WIDGET_STATE_MIME}): the widgets would not render")
    html = executed.with_suffix(".html")
    html.write_text(page, encoding="utf-8")
    print(f"executed {notebook.name} in {seconds:.0f} s -> {executed}")
    where = (f"local require.js {assets['versions']['requirejs']} and html-manager "
             f"{assets['versions']['@jupyter-widgets/html-manager']} in {build_dir / 'static'}" if assets
             else "require.js and the widget renderer from CDNs")
    print(f"wrote {html} (widget state embedded; {where})")
    return executed, html


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lib.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="course", help="the notebook's PRESET (default course)")
    parser.add_argument("--results-dir", default=None, help="results folder (default: the project's results/)")
    parser.add_argument("--figures-dir", default=None, help="figures folder (default: the project's figures/)")
    parser.add_argument("--notebook", default=str(NOTEBOOK))
    parser.add_argument("--build-dir", default=None, help="default: build/ for course, build/<preset>/ otherwise")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell")
    parser.add_argument("--no-fetch", action="store_true", help="do not fetch the JavaScript; use the CDN URLs")
    args = parser.parse_args(argv)
    from nbclient.exceptions import CellExecutionError

    try:
        export(args.notebook, args.build_dir, args.preset, args.results_dir, args.figures_dir, args.timeout,
               fetch=not args.no_fetch)
    except (ValueError, ResultsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except CellExecutionError as error:
        where = args.build_dir or default_build_dir(args.preset)
        print(f"error: a cell of the notebook failed with {error.ename}: {error.evalue} (the notebook with its "
              f"outputs so far is in {where})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
