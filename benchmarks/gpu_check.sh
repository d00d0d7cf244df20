#!/usr/bin/env bash
# The study on a GPU, in one bounded run (about 9 minutes): the engine's tests on CUDA, the
# benchmark, and the course grid search and evaluation from an empty results folder, compared with
# the committed CPU results. Everything goes into ONE file, $OUT/gpu_check.txt when $OUT is set,
# else ./gpu_check.txt, printed at the end.
#
#     bash benchmarks/gpu_check.sh                              # on a machine with a CUDA GPU
#     GPU_CHECK_ALLOW_CPU=1 PRESET=quick bash benchmarks/gpu_check.sh   # every stage on the CPU, quick preset
#
# Needs: python3 with a CUDA build of torch already installed (nothing is downloaded: a machine
# without network cannot fetch the CUDA build); numpy, scipy, tqdm and pytest, taken from the
# system or installed from wheels in .whl/ (make them on a machine with network:
#     python3 -m pip download --only-binary=:all: --dest .whl numpy scipy tqdm pytest
# .whl/ is git-ignored: copy it along); the MNIST files the committed results were made with
# (MNIST/raw/*.gz under $PYTORCH_DATA_DIR, ./data or ../shared/data; ./data is git-ignored: copy
# ../shared/data/MNIST there to take them along).
# Stages: env, tests, bench, grid, evaluate, compare. Each runs under `timeout` (its share of
# TOTAL_S, default 540 s), and a failed or timed-out stage is recorded without stopping the next.
# If the grid search does not finish, the evaluation runs on the committed grid's choice (said so).
# Exit status: 0 when every stage passed, 1 when one failed, 3 without CUDA, 4 without MNIST.
# Knobs (environment): PRESET (course), TOTAL_S (540), T_TESTS (120), T_BENCH (50), T_GRID (230),
# T_EVAL (100), PYTHON (python3), REFERENCE_DIR (the committed results/), BENCH_ARGS (extra options
# of bench_engine.py, e.g. "--rounds 2 --epochs 1" for a dry run), GPU_CHECK_ALLOW_CPU.
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PYTHON=${PYTHON:-python3}
PRESET=${PRESET:-course}
TOTAL_S=${TOTAL_S:-540}
T_TESTS=${T_TESTS:-120}
T_BENCH=${T_BENCH:-50}
T_GRID=${T_GRID:-230}
T_EVAL=${T_EVAL:-100}
REFERENCE_DIR=${REFERENCE_DIR:-$ROOT/results}
ALLOW_CPU=${GPU_CHECK_ALLOW_CPU:-0}
REPORT=${OUT:+$OUT/gpu_check.txt}
REPORT=${REPORT:-$ROOT/gpu_check.txt}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
RESULTS=$WORK/results
START=$(date +%s)
DEADLINE=$((START + TOTAL_S))
FAILED=()
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TQDM_DISABLE=1  # no progress bars in the logs
export PYTHONUNBUFFERED=1

mkdir -p "$(dirname "$REPORT")"
: > "$REPORT"
say() { printf '%s\n' "$*" | tee -a "$REPORT"; }
now() { date +%s.%N; }

finish() {  # the summary line, the whole report, and the exit status
    say ""
    if (( $1 >= 3 )); then
        say "== end: $(( $(date +%s) - START )) s; NOT RUN (exit status $1): see MISSING above"
    else
        say "== end: $(( $(date +%s) - START )) s in all; failed stages: ${FAILED[*]:-none}"
    fi
    echo "--- $REPORT ---"
    cat "$REPORT"
    rm -rf "$WORK"
    exit "$1"
}

# stage NAME WANTED_S RESERVE_S CMD...: run CMD under timeout, with at most WANTED_S seconds and
# RESERVE_S kept for the stages after it; its output (last 60 lines) and wall time go to the report.
stage() {
    local name=$1 wanted=$2 reserve=$3
    shift 3
    local left=$((DEADLINE - $(date +%s) - reserve))
    local limit=$(( wanted < left ? wanted : left ))
    say ""
    if (( limit < 5 )); then
        say "== $name: SKIPPED, no time left in the ${TOTAL_S} s budget"
        FAILED+=("$name(skipped)")
        return 1
    fi
    say "== $name (limit ${limit} s): $*"
    local log=$WORK/$name.log t0 rc
    t0=$(now)
    timeout -s INT -k 10 "$limit" "$@" > "$log" 2>&1
    rc=$?
    tail -n 60 "$log" | tee -a "$REPORT"
    local wall
    wall=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    if (( rc == 0 )); then
        say "-- $name: ok, wall time ${wall} s"
    elif (( rc == 124 || rc == 137 )); then
        say "-- $name: TIMED OUT after ${wall} s (limit ${limit} s)"
        FAILED+=("$name(timeout)")
    else
        say "-- $name: FAILED (exit status $rc), wall time ${wall} s"
        FAILED+=("$name(rc=$rc)")
    fi
    return "$rc"
}

say "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ), preset $PRESET, commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ' (uncommitted changes)')"
say "host: $(uname -srm), $(nproc) CPUs; python: $("$PYTHON" --version 2>&1)"

# ---------------------------------------------------------------------------- CUDA and torch
if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
    say "MISSING: torch is not installed for $PYTHON. Install a CUDA build of torch first (this script downloads nothing)."
    finish 3
fi
CUDA=$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))' 2>&1 | tail -n 1)
if [[ "$CUDA" != 1 ]]; then
    if [[ "$ALLOW_CPU" != 1 ]]; then
        say "MISSING: no CUDA device visible to torch $("$PYTHON" -c 'import torch; print(torch.__version__, "(CUDA build:", torch.version.cuda, ")")' 2>&1)."
        say "This check needs a CUDA build of torch and a GPU. To run every stage on the CPU instead (a dry run): GPU_CHECK_ALLOW_CPU=1 PRESET=quick bash $0"
        finish 3
    fi
    DEVICE=cpu
    say "NO GPU: GPU_CHECK_ALLOW_CPU=1, every stage runs on the CPU (a dry run of this script; no GPU number)"
else
    DEVICE=cuda
fi
if command -v nvidia-smi > /dev/null; then
    say "nvidia-smi: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 4 | tr '\n' ';')"
else
    say "nvidia-smi: not found"
fi
"$PYTHON" - <<'EOF' 2>&1 | tee -a "$REPORT"
import torch
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"{torch.get_num_threads()} CPU threads")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}; "
          f"{torch.cuda.device_count()} GPU(s)")
print(f"TF32 allowed in float32 convolutions {torch.backends.cudnn.allow_tf32}, in matrix products "
      f"{torch.backends.cuda.matmul.allow_tf32} (torch's defaults, as the study runs; the tests turn TF32 off)")
EOF

# ---------------------------------------------------------------------------- packages and data
MISSING=$("$PYTHON" -c '
import importlib.util
print(" ".join(m for m in ("numpy", "scipy", "tqdm", "pytest") if importlib.util.find_spec(m) is None))')
if [[ -n "$MISSING" ]]; then
    if compgen -G "$ROOT/.whl/*.whl" > /dev/null; then
        # a virtual environment that sees the system's packages (torch), else a folder on PYTHONPATH
        if "$PYTHON" -m venv --system-site-packages "$WORK/venv" > /dev/null 2>&1; then
            PYTHON=$WORK/venv/bin/python
            say "installing from .whl/ into a virtual environment over the system's packages: $MISSING"
            "$PYTHON" -m pip install --quiet --no-index --find-links "$ROOT/.whl" $MISSING 2>&1 | tail -n 5 | tee -a "$REPORT"
        else
            say "installing from .whl/ into $WORK/site (on PYTHONPATH): $MISSING"
            "$PYTHON" -m pip install --quiet --no-index --find-links "$ROOT/.whl" --target "$WORK/site" $MISSING 2>&1 \
                | tail -n 5 | tee -a "$REPORT"
            export PYTHONPATH="$PYTHONPATH:$WORK/site"
        fi
    fi
    MISSING=$("$PYTHON" -c '
import importlib.util
print(" ".join(m for m in ("numpy", "scipy", "tqdm", "pytest") if importlib.util.find_spec(m) is None))')
    [[ -n "$MISSING" ]] && say "MISSING packages (stages needing them will fail): $MISSING; put their wheels in .whl/"
fi
for dir in "${PYTORCH_DATA_DIR:-}" "$ROOT/data" "$ROOT/../shared/data" "$ROOT/shared/data"; do
    if [[ -n "$dir" && -d "$dir/MNIST/raw" ]]; then
        export PYTORCH_DATA_DIR=$dir
        break
    fi
done
if [[ -z "${PYTORCH_DATA_DIR:-}" || ! -d "$PYTORCH_DATA_DIR/MNIST/raw" ]]; then
    say "MISSING: MNIST (MNIST/raw/*.gz) in none of \$PYTORCH_DATA_DIR, ./data, ../shared/data, ./shared/data."
    say "Copy the files the committed results were made with (../shared/data/MNIST) to ./data/MNIST and carry ./data."
    finish 4
fi
say "MNIST: $PYTORCH_DATA_DIR/MNIST/raw ($(cd "$PYTORCH_DATA_DIR/MNIST/raw" && md5sum ./*.gz 2>/dev/null | awk '{printf "%s %s; ", $2, $1}'))"

# ---------------------------------------------------------------------------- the stages
# Reserves: what the later stages need at least, so that an early stage cannot eat their time.
stage tests "$T_TESTS" 250 env LIB_TEST_DEVICE="$DEVICE" "$PYTHON" -m pytest -q -p no:cacheprovider \
    -o addopts="" -rfE --tb=short tests/test_cuda.py tests/test_engine.py tests/test_parallel.py

# shellcheck disable=SC2086  # BENCH_ARGS: several options
stage bench "$T_BENCH" 220 "$PYTHON" benchmarks/bench_engine.py --device "$DEVICE" ${BENCH_ARGS:-}

GRID_START=$(date +%s)
stage grid "$T_GRID" 120 "$PYTHON" -m lib grid --preset "$PRESET" --results-dir "$RESULTS"
GRID_OK=$?
if (( GRID_OK != 0 )); then
    if [[ -f "$REFERENCE_DIR/$PRESET/grid.json" ]]; then
        mkdir -p "$RESULTS/$PRESET"
        cp "$REFERENCE_DIR/$PRESET/grid.json" "$RESULTS/$PRESET/grid.json"
        say "the grid search did not finish ($(ls "$RESULTS/$PRESET/runs" 2>/dev/null | wc -l) run files written in $(( $(date +%s) - GRID_START )) s): the evaluation uses the committed grid's choice (grid.json copied from $REFERENCE_DIR)"
    else
        say "the grid search did not finish and $REFERENCE_DIR/$PRESET/grid.json does not exist: no evaluation possible"
    fi
fi

stage evaluate "$T_EVAL" 15 "$PYTHON" -m lib evaluate --preset "$PRESET" --results-dir "$RESULTS"

stage compare 30 0 "$PYTHON" benchmarks/compare_results.py "$RESULTS" --reference "$REFERENCE_DIR" --preset "$PRESET"

say ""
say "== times recorded in the new results files (training: the sum of the runs' training times):"
"$PYTHON" - "$RESULTS/$PRESET" "$GRID_OK" <<'EOF' 2>&1 | tee -a "$REPORT"
import json, sys
from pathlib import Path
folder = Path(sys.argv[1])
for name in ("grid", "evaluation"):
    path = folder / f"{name}.json"
    if not path.exists():
        print(f"{name}: no file")
        continue
    if name == "grid" and sys.argv[2] != "0":
        print("grid: copied from the reference (the grid search did not finish here)")
        continue
    d = json.loads(path.read_text())
    p = d.get("provenance", {})
    print(f"{name}: training {d.get('training_time_s', 0):.1f} s, wall {d.get('wall_time_s', 0):.1f} s, "
          f"device {p.get('device')}, gpu {p.get('gpu')}, written {p.get('written_at')}")
EOF

(( ${#FAILED[@]} == 0 )) && finish 0
finish 1
