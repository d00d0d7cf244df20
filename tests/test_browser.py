"""The notebook in JupyterLab, in a real (headless) browser, used as its readers use it.

JupyterLab is started on 127.0.0.1 (a free port, a token, every Jupyter and IPython folder
temporary, so nothing of the user's is read or written) on a copy of the notebook; Chromium,
driven through Selenium, opens it, runs every cell from the Run menu, waits until the kernel is
idle and checks that no cell shows an error. Then, in the retrain panel, it chooses a seed-report
model, checks that its committed setting is in the controls, sets 1 round of 2 epochs, clicks
Train and checks the result line; then it starts a long training and checks that running the
panel's cell again stops it, and so does Kernel > Interrupt. A screenshot is kept in
build/test-artifacts/notebook.png (with the server's log beside it).

The notebook runs on the committed `course` results (it reads them; nothing retrains but the
panel's click); its figures go to a temporary folder. Skipped, with what to install, when
Chromium, chromedriver or Selenium are missing. A watchdog ends the browser and the server after
GLOBAL_TIMEOUT seconds, so the test fails instead of hanging.

    apt-get install -y chromium chromium-driver && .venv/bin/pip install selenium
    .venv/bin/python -m pytest -q tests/test_browser.py
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from lib.experiments import PROJECT_ROOT, summary
from lib.export import BUILD_DIR, NOTEBOOK
from lib.stats import pm

GLOBAL_TIMEOUT = 600  # seconds for the whole test: server, browser, Run All, one training
RUN_ALL_TIMEOUT = 300  # Run All takes about 25 s on a quiet 2-core machine
TRAIN_TIMEOUT = 240
ARTIFACTS = BUILD_DIR / "test-artifacts"
MODEL = "SimpleCNN"  # a seed-report model (004) whose committed setting (SGD, lr 0.1) differs from the default's

INSTALL = "apt-get install -y chromium chromium-driver, and pip install selenium (requirements.txt)"


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _requirements():
    """(chromium, chromedriver), or skip the module saying what to install."""
    browser, driver = _browser(), shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        browser = None
    if browser is None or driver is None:
        pytest.skip(f"browser test skipped: no Chromium, chromedriver or Selenium; install them with {INSTALL}",
                    allow_module_level=True)
    return browser, driver


BROWSER, CHROMEDRIVER = _requirements()

from selenium import webdriver  # noqa: E402  (after the skip above)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_settings(folder):
    """JupyterLab user settings: no news or update check (a toast over the page), no autosave, and
    every cell rendered (by default only the cells near the view are in the page)."""
    settings = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                            "checkForUpdates": False},
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},  # every cell
    }
    for name, value in settings.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a copy of the notebook; yields (base url, token, server log path, server process)."""
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    folders = {name: tmp / name.lower() for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                                                     "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR",
                                                     "IPYTHONDIR", "EE559_FIGURES_DIR")}
    for folder in folders.values():
        folder.mkdir()
    write_settings(folders["JUPYTERLAB_SETTINGS_DIR"])
    env = {**os.environ, **{k: str(v) for k, v in folders.items()}, "PYTHONPATH": str(PROJECT_ROOT),
           "JUPYTER_PLATFORM_DIRS": "1", "EE559_PRESET": "course"}
    env.pop("EE559_RESULTS_DIR", None)  # the committed results, read only
    port, token = free_port(), os.urandom(16).hex()
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = tmp / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root,
                                  start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an http_proxy
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with direct.open(f"{base}/api/status?token={token}", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield base, token, log, server
    finally:
        stop_process_group(server)


def stop_process_group(process, grace=20):
    """SIGTERM to the server and its kernels (its own session), then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(grace)


@pytest.fixture(scope="module")
def browser(lab):
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--window-size=1400,1000", "--disable-background-networking", "--no-proxy-server"):
        options.add_argument(argument)
    # chromedriver and the browser it starts in a session of their own, so that the watchdog can end both
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER, popen_kw={"start_new_session": True})
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(120)
    _, _, _, server = lab

    def watchdog():  # the last resort against a hang: end the server and the browser
        print(f"test_browser: {GLOBAL_TIMEOUT} s passed, stopping the browser and JupyterLab", file=sys.stderr)
        stop_process_group(server, grace=5)
        if service.process is not None:
            try:
                os.killpg(service.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    timer = threading.Timer(GLOBAL_TIMEOUT, watchdog)
    timer.daemon = True
    timer.start()
    try:
        yield driver
    finally:
        timer.cancel()
        try:
            driver.quit()
        except Exception:  # already ended by the watchdog
            pass


def wait(driver, timeout, condition, message):
    return WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: condition(d), message)


NOTEBOOK_JS = "const panel = window.jupyterapp.shell.currentWidget; "


def kernel_status(driver):
    return driver.execute_script(NOTEBOOK_JS + "const s = panel && panel.sessionContext && "
                                 "panel.sessionContext.session; return s && s.kernel ? s.kernel.status : null;")


def execution_counts(driver):
    """The execution count of every code cell, from the notebook's model: None while queued or never run."""
    return driver.execute_script(NOTEBOOK_JS + "return panel.content.widgets.filter(c => c.model.type === 'code')"
                                 ".map(c => c.model.executionCount);")


def error_outputs(driver):
    """(cell index, ename, evalue) of every error output, read from the notebook's model."""
    return driver.execute_script(NOTEBOOK_JS + """
        const errors = [];
        panel.content.widgets.forEach((cell, i) => {
            if (cell.model.type !== 'code') return;
            for (const o of cell.model.outputs.toJSON()) {
                if (o.output_type === 'error') errors.push([i, o.ename, o.evalue]);
            }
        });
        return errors;""")


def panel_control(driver, kind, label):
    """The ipywidgets control of class `widget-<kind>` whose label is `label`."""
    for element in driver.find_elements(By.CSS_SELECTOR, f".widget-{kind}"):
        labels = element.find_elements(By.CSS_SELECTOR, "label")
        if labels and labels[0].text.strip() == label:
            return element
    raise AssertionError(f"no {kind} labelled {label!r} in the page")


def readout(driver, label):
    return panel_control(driver, "slider", label).find_element(By.CSS_SELECTOR, ".widget-readout").text.strip()


def set_slider(driver, label, value):
    """Type a value into a slider's readout, as a user does, then Enter."""
    field = panel_control(driver, "slider", label).find_element(By.CSS_SELECTOR, ".widget-readout")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", field)
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value), Keys.ENTER)
    wait(driver, 30, lambda d: readout(d, label) == str(value), f"{label} did not take the value {value}")


def menu(driver, name, item):
    """Click `item` in the menu `name` of JupyterLab's menu bar."""
    next(e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item") if e.text.strip() == name).click()
    wait(driver, 30, lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel")
                                if e.text.strip() == item], f"no {item} in the {name} menu")[0].click()


def click_train(driver):
    next(b for b in driver.find_elements(By.CSS_SELECTOR, "button.widget-button") if b.text.strip() == "Train").click()


WAIT_NO_TRAINING = """
import time as _t, lib.widgets as _w
_end = _t.monotonic() + 60
while _w.active_panel() is not None and _t.monotonic() < _end:
    _t.sleep(0.2)
print("stopped" if _w.active_panel() is None else "still training")
"""


def kernel_python(driver, code):
    """Run `code` in the notebook's kernel (not in a cell) and return what it printed."""
    return driver.execute_async_script(NOTEBOOK_JS + """
        const done = arguments[arguments.length - 1];
        const future = panel.sessionContext.session.kernel.requestExecute({code: arguments[0], store_history: false});
        let out = '';
        future.onIOPub = msg => { if (msg.header.msg_type === 'stream') out += msg.content.text; };
        future.done.then(() => done(out.trim()), error => done('error: ' + error));""", code)


def panel_message(driver):
    texts = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".widget-html-content")]
    return "\n".join(t for t in texts if "test accuracy" in t or "Training" in t or "Stopped" in t or "Committed" in t)


def test_notebook_in_jupyterlab(lab, browser):
    base, token, log, _ = lab
    driver = browser
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        driver.get(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
        wait(driver, 120, lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell"),
             "the notebook did not open")
        wait(driver, 120, lambda d: kernel_status(d) == "idle", "the kernel did not start")
        nb_code_cells = len(execution_counts(driver))

        menu(driver, "Run", "Run All Cells")
        wait(driver, RUN_ALL_TIMEOUT, lambda d: None not in execution_counts(d) and kernel_status(d) == "idle",
             "Run All did not finish")
        run_all_s = time.monotonic() - start
        assert execution_counts(driver) == list(range(1, nb_code_cells + 1))
        assert error_outputs(driver) == []
        assert "Traceback" not in driver.find_element(By.CSS_SELECTOR, ".jp-Notebook").text
        assert len(driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-RenderedImage img")) >= 5  # figures

        # the retrain panel: choose a seed-report model, its committed setting is loaded
        model = panel_control(driver, "dropdown", "Model")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", model)
        Select(model.find_element(By.TAG_NAME, "select")).select_by_visible_text(MODEL)
        wait(driver, 60, lambda d: f"Committed result of {MODEL}" in panel_message(d),
             "the model's setting did not load")
        optimizer = Select(panel_control(driver, "dropdown", "Optimizer").find_element(By.TAG_NAME, "select"))
        assert optimizer.first_selected_option.text == "SGD"
        assert (readout(driver, "Learning rate"), readout(driver, "Epochs"), readout(driver, "Batch size")) == (
            "1.0e-1", "25", "25")
        row = summary("course")[MODEL]  # the committed row of `python -m lib summary --preset course`
        assert (f"test accuracy {pm(row['mean_acc'], row['std_acc'])} % over {row['n_rounds']} rounds, "
                "trained with SGD lr 0.1, 25 epochs") in panel_message(driver)

        set_slider(driver, "Rounds", 1)
        set_slider(driver, "Epochs", 2)
        click_train(driver)
        wait(driver, TRAIN_TIMEOUT, lambda d: any(s in panel_message(d) for s in (
            f"{MODEL}, SGD lr 0.1, 2 epochs", "Training failed", "Stopped", "Not started")), "the training did not end")
        text = panel_message(driver)
        assert (f"{MODEL}, SGD lr 0.1, 2 epochs, batch 25, auxiliary weight 1, 1000 training pairs, 1 round: "
                "test accuracy ") in text
        assert "+-" not in text.split("1 round: test accuracy")[1].split("%")[0]  # one round: no spread
        assert f"Committed result of {MODEL}" in text
        assert kernel_status(driver) == "idle" and error_outputs(driver) == []
        trained_s = time.monotonic() - start

        # a long training, then the panel's cell run again: the training stops (one per kernel)
        set_slider(driver, "Rounds", 10)
        set_slider(driver, "Epochs", 25)
        click_train(driver)
        wait(driver, TRAIN_TIMEOUT, lambda d: "epoch 1/25" in panel_message(d), "the long training did not start")
        cell = next(c for c in driver.find_elements(By.CSS_SELECTOR, ".jp-CodeCell")
                    if "RetrainPanel(" in c.find_element(By.CSS_SELECTOR, ".jp-InputArea-editor").text)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", cell)
        cell.find_element(By.CSS_SELECTOR, ".jp-InputPrompt").click()  # select the cell
        menu(driver, "Run", "Run Selected Cell")
        wait(driver, 120, lambda d: "Committed result of NetWSAL" in panel_message(d) and kernel_status(d) == "idle",
             "the panel's cell did not run again")
        assert kernel_python(driver, WAIT_NO_TRAINING) == "stopped"

        # Kernel > Interrupt while no cell runs stops the training
        set_slider(driver, "Rounds", 10)
        click_train(driver)
        wait(driver, TRAIN_TIMEOUT, lambda d: "epoch 1/25" in panel_message(d), "the training did not start")
        menu(driver, "Kernel", "Interrupt Kernel")
        wait(driver, 120, lambda d: "(Kernel > Interrupt); no result kept." in panel_message(d),
             "Kernel > Interrupt did not stop the training")
        assert error_outputs(driver) == []
        print(f"test_browser: Run All {run_all_s:.0f} s, then one training {trained_s:.0f} s, "
              f"whole test {time.monotonic() - start:.0f} s")
    finally:
        driver.save_screenshot(str(ARTIFACTS / "notebook.png"))
        shutil.copy(log, ARTIFACTS / "jupyterlab.log")
