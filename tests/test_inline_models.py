"""A network defined outside lib/ (as the notebook defines its four models) trains as itself.

`lib.models.model_spec` tells a class that computes what the library's class of its name computes
(that model: the library's runs and cache keys) from a changed one (a variant: its own key, its
own cache files). A variant trains as itself in this process and in the worker processes, to
which lib.pool ships it by value (the class here is local to a function: no worker can import it).
"""
import pytest
import torch
from torch import nn

from lib import experiments, models, pool
from lib.experiments import get_preset
from lib.models import both_digits


def inline_netws(width=32, activation=nn.ReLU):
    """NetWS written out as the notebook writes it, with the first convolution's width and the
    branch's activation as parameters: width 32 with ReLU is lib.models.NetWS."""

    class NetWS(nn.Module):
        weight_sharing, auxiliary = True, False

        def __init__(self):
            super().__init__()
            self.branch = nn.Sequential(
                nn.Conv2d(1, width, 3), nn.MaxPool2d(2), activation(),  # (N, width, 6, 6)
                nn.Conv2d(width, 64, 3), nn.MaxPool2d(2), activation(),  # (N, 64, 2, 2)
                nn.Flatten(), nn.Linear(256, 128), activation(), nn.Linear(128, 10))  # (N, 10)
            self.head = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 2))

        def forward(self, x):  # x: (N, 2, 14, 14)
            digits = both_digits(self.branch, x)  # (N, 2, 10)
            return self.head(torch.relu(digits).flatten(1)), None

    return NetWS


@pytest.fixture
def no_variants_left(monkeypatch):
    monkeypatch.setattr(models, "_VARIANTS", {})
    yield
    pool.shutdown_workers()


def test_only_a_changed_class_is_a_variant(no_variants_left):
    assert models.model_spec(inline_netws()) == ("NetWS", "")
    assert models.model_spec("NetWS") == ("NetWS", "") and models.model_spec(models.NetWS) == ("NetWS", "")
    name, narrow = models.model_spec(inline_netws(width=16))
    assert name == "NetWS" and len(narrow) == 12
    assert models.model_spec(inline_netws(width=16)) == ("NetWS", narrow)  # the same change, defined again
    _, tanh = models.model_spec(inline_netws(activation=nn.Tanh))  # same parameter shapes, another function
    assert len({"", narrow, tanh}) == 3
    assert models.get_model_class("NetWS", narrow)().branch[0].out_channels == 16
    with pytest.raises(ValueError, match="unknown architecture 'abc' of model 'NetWS'"):
        models.get_model_class("NetWS", "abc")


def test_a_changed_network_trains_as_itself_with_its_own_cache(tmp_path, monkeypatch, no_variants_left):
    """The grid (in 2 worker processes) and the evaluation (here) train the changed class; rerun with
    the original class, the grid reads the library's runs again, training nothing."""
    preset, folder = get_preset("quick"), tmp_path / "quick"
    original, narrow = inline_netws(), inline_netws(width=16)
    library_count = models.count_parameters(models.NetWS())
    narrow_count = models.count_parameters(narrow())
    assert narrow_count != library_count

    first = experiments.grid_search(preset, results_dir=tmp_path, progress=False, models=[original], workers=1)
    library_runs = {c["run"] for c in first["cells"]}
    assert all("arch" not in c for c in first["cells"])

    grid = experiments.grid_search(preset, results_dir=tmp_path, progress=False, models=[narrow], workers=2)
    arch = models.model_spec(narrow)[1]
    assert all(c["arch"] == arch for c in grid["cells"]) and grid["choice"]["per_model"]["NetWS"]["arch"] == arch
    assert not library_runs & {c["run"] for c in grid["cells"]}  # its own cache files
    for cell in grid["cells"]:
        record = experiments.read_json(folder / "runs" / cell["run"])
        assert record["config"]["arch"] == arch and record["nb_parameters"] == narrow_count  # trained in a worker

    evaluation = experiments.evaluate(preset, results_dir=tmp_path, progress=False, models=[narrow], workers=1)
    entry = evaluation["protocols"]["common"]["models"]["NetWS"]
    assert entry["nb_parameters"] == narrow_count and entry["config"]["arch"] == arch
    with pytest.raises(experiments.ResultsError, match="for another architecture of that name"):
        experiments.evaluate(preset, results_dir=tmp_path, progress=False, models=[original], workers=1)

    monkeypatch.setattr(experiments, "train_rounds", lambda *a, **k: pytest.fail("a cached run was trained again"))
    again = experiments.grid_search(preset, results_dir=tmp_path, progress=False, models=[original], workers=1)
    assert {c["run"] for c in again["cells"]} == library_runs
    assert {experiments.read_json(folder / "runs" / r)["nb_parameters"] for r in library_runs} == {library_count}


EDITED_RUN = """
from lib import experiments, models
grid = experiments.grid_search("quick", results_dir={results!r}, progress=False, models=[NetWS], workers=2)
record = experiments.read_json(experiments.preset_dir("quick", {results!r}) / "runs" / grid["cells"][0]["run"])
print("arch", models.model_spec(NetWS)[1], grid["cells"][0]["arch"], record["config"]["arch"])
print("parameters", models.count_parameters(NetWS()), record["nb_parameters"])
"""


def test_the_notebook_cell_edited_in_a_kernel_trains_in_the_workers(tmp_path):
    """As a student would: the notebook's architecture cell with a narrower first convolution, run
    in a kernel (its classes live in __main__, which no worker can import), then the grid search in
    two worker processes: the runs are the edited class's."""
    import nbformat
    from nbclient import NotebookClient

    from lib.export import NOTEBOOK

    cell = next(c for c in nbformat.read(NOTEBOOK, as_version=4).cells if "inline-models" in c.metadata.get("tags", []))
    edited = cell.source.replace("nn.Conv2d(1, 32, 3)", "nn.Conv2d(1, 16, 3)").replace("nn.Conv2d(32, 64, 3)",
                                                                                         "nn.Conv2d(16, 64, 3)")
    assert edited != cell.source
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(edited),
                                         nbformat.v4.new_code_cell(EDITED_RUN.format(results=str(tmp_path)))])
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    printed = "".join(o.get("text", "") for o in nb.cells[1].outputs if o.output_type == "stream").split()
    arch = printed[printed.index("arch") + 1]
    assert len(arch) == 12 and printed[printed.index("arch") + 2: printed.index("arch") + 4] == [arch, arch]
    count, trained = printed[printed.index("parameters") + 1: printed.index("parameters") + 3]
    assert count == trained != str(models.count_parameters(models.NetWS()))
