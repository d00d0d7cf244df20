"""`python -m lib verify` on the quick preset: a rerun on this machine is identical; a committed mean
moved outside what a rerun gives is caught (exit status 1)."""
import json
import shutil
import subprocess
import sys

from lib import verify
from lib.experiments import PROJECT_ROOT


def test_rerunning_on_the_same_machine_is_identical(quick_study):
    results, _, _ = quick_study
    report = verify.verify("quick", sample=2, results_dir=results)
    assert len(report) == 2
    assert len({json.loads((results / "quick" / "runs" / name).read_text())["config"]["model"] for name in report}) == 2
    for name, entry in report.items():
        assert entry["identical"], name
        for m in entry["metrics"].values():
            assert m["max_abs_diff"] == 0 and m["inside"] and m["rerun_mean"] == m["committed_mean"]
    text, ok = verify.format_report(report)
    assert ok and text.endswith("2 runs: 2 identical, 0 not; every mean inside its committed 95 % interval")
    assert not list((results / "quick" / "runs").glob(".*tmp"))


def test_a_mean_outside_its_committed_interval_fails(quick_study, tmp_path):
    results, _, _ = quick_study
    shutil.copytree(results / "quick", tmp_path / "quick")
    name, record = verify.choose(verify.committed_runs("quick", tmp_path), 1)[0]
    for metric in ("val_acc", "test_acc"):  # every round's last accuracy moved 30 points, each by a little more,
        rows = record["history"][metric]  # so the committed interval is narrow even with 2 rounds (t = 12.7)
        mean = sum(row[-1] for row in rows) / len(rows)
        target = mean + 0.3 if mean <= 0.6 else mean - 0.3
        for r, row in enumerate(rows):
            row[-1] = target - 0.001 * r
    path = tmp_path / "quick" / "runs" / name
    path.write_text(json.dumps(record))
    before = path.read_text()
    out = subprocess.run([sys.executable, "-m", "lib", "verify", "--preset", "quick", "--sample", "1", "--results-dir",
                          str(tmp_path)], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{name}: " in out.stdout and "not identical" in out.stdout and "OUTSIDE" in out.stdout
    assert out.stdout.strip().endswith("a mean falls OUTSIDE its committed interval")
    assert path.read_text() == before  # the committed file is only read
