#!/usr/bin/env bash
# The GPU check: the GPU-marked tests and the GPU benchmarks in one run of at most 6 minutes,
# a summary table last. Everything it measures goes to one folder of at most 8 files.
#
# On the lent GPU machine (the device tool; a bare image: Python 3.12, torch, no pydantic, Ray,
# Optuna or MLflow, no registry):
#   1. here, once:  make gpu-bundle          (wheels the image lacks -> .gpu-bundle/, ~2 MB)
#   2. device run:  command   bash bench/gpu_check.sh "$OUT"
#                   carry     [".gpu-bundle"]
#                   timeout_s 420            (the check stops itself by 360 s; room for a rerun)
#   3. the files come back under files_at: summary.txt first.
# Rehearsal on a CPU machine (a fresh venv with only the image's packages): make gpu-rehearsal.
# SHARPCAL_GPU_CHECK_SMOKE=1 runs tiny sizes, also on a CPU, to check the script itself.
#
# Files written to OUT_DIR (default bench/out/gpu_check): check.log (everything printed),
# summary.txt, tests.txt, step_cost.json, throughput.json, trials_per_gpu.json.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${1:-bench/out/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SMOKE=${SHARPCAL_GPU_CHECK_SMOKE:-0}
# 360 s on a GPU; a smoke run on a (possibly busy) CPU gets more, every stage's cap scaled alike.
[ "$SMOKE" = 1 ] && DEFAULT_BUDGET_S=900 || DEFAULT_BUDGET_S=360
BUDGET_S=${SHARPCAL_GPU_CHECK_BUDGET_S:-$DEFAULT_BUDGET_S}
BUNDLE=${SHARPCAL_GPU_BUNDLE:-.gpu-bundle}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
: >"$OUT/check.log"
exec > >(tee -a "$OUT/check.log") 2>&1

# Seconds a stage may take: its own cap, less what the whole budget has left after keeping
# `reserve` seconds for the stages after it (both given for a 360 s budget, scaled to BUDGET_S).
stage_limit() {
  local cap=$(($1 * BUDGET_S / 360)) reserve=$(($2 * BUDGET_S / 360))
  local left=$((BUDGET_S - SECONDS - reserve))
  [ "$left" -lt "$cap" ] && cap=$left
  [ "$cap" -lt 1 ] && cap=1
  echo "$cap"
}

status=0
echo "== bundle ($((SECONDS)) s)"
if ! "$PY" -c 'import pydantic, relplot' 2>/dev/null; then
  if ! ls "$BUNDLE"/*.whl >/dev/null 2>&1; then
    echo "gpu_check: pydantic or relplot is missing and $BUNDLE/ holds no wheels: run 'make gpu-bundle' here and carry $BUNDLE" >&2
    exit 2
  fi
  SITE_DIR=$(mktemp -d)
  trap 'rm -rf "$SITE_DIR"' EXIT
  SITE=$SITE_DIR/site
  timeout "$(stage_limit 60 300)" "$PY" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --target "$SITE" "$BUNDLE"/*.whl || { echo "gpu_check: bundle install failed" >&2; exit 2; }
  export PYTHONPATH="$PYTHONPATH:$SITE"
  echo "installed $(ls "$BUNDLE"/*.whl | wc -l) wheels from $BUNDLE into $SITE"
fi
"$PY" - <<'PY' || { echo "gpu_check: the core does not import (see above)" >&2; exit 2; }
import sys
import torch
import trainables.loop  # noqa: F401  (the core the tests and benchmarks use)
driver = sorted(m for m in ("ray", "optuna", "mlflow") if m in sys.modules)
assert not driver, f"the core imported {driver}"
cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"python {sys.version.split()[0]} | torch {torch.__version__} | CUDA device: {cuda}")
PY
on_cuda=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')
if [ "$SMOKE" != 1 ] && [ "$on_cuda" != 1 ]; then
  echo "gpu_check: no CUDA device here; set SHARPCAL_GPU_CHECK_SMOKE=1 for a CPU smoke run" >&2
  exit 2
fi
if [ "$SMOKE" = 1 ]; then
  STEP_ARGS=(--batch 8 --steps 2 --warmup 1)
  TP_ARGS=(--batch 8 --steps 2 --warmup 1 --repeats 2)
  TPG_ARGS=(--smoke)
else
  STEP_ARGS=(--steps 20)
  TP_ARGS=(--steps 30 --repeats 3 --warmup 5)
  TPG_ARGS=()
fi

echo "== GPU-marked tests ($((SECONDS)) s)"
mapfile -t gpu_tests < <(grep -l "pytest.mark.gpu" tests/test_*.py)
timeout "$(stage_limit 60 240)" "$PY" -m pytest -q -m gpu -p no:cacheprovider "${gpu_tests[@]}" \
  >"$OUT/tests.txt" 2>&1 || status=1
cat "$OUT/tests.txt"

echo "== step cost ($((SECONDS)) s)"
timeout "$(stage_limit 50 190)" "$PY" bench/step_cost.py "${STEP_ARGS[@]}" \
  --json "$OUT/step_cost.json" || status=1

echo "== throughput ($((SECONDS)) s)"
timeout "$(stage_limit 130 100)" "$PY" bench/throughput.py "${TP_ARGS[@]}" \
  --json "$OUT/throughput.json" || status=1

echo "== trials per device without Ray: 1, 2, 4 processes ($((SECONDS)) s)"
tpg_s=$(stage_limit 150 5)
timeout "$tpg_s" "$PY" bench/trials_per_gpu.py "${TPG_ARGS[@]}" --budget-s $((tpg_s - 5)) \
  --json "$OUT/trials_per_gpu.json" || status=1

echo
"$PY" - "$OUT" "$SECONDS" "$status" <<'PY' | tee "$OUT/summary.txt"
import json, pathlib, sys
out, seconds, status = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]


def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


rows = []
tests = (out / "tests.txt").read_text().strip().splitlines() if (out / "tests.txt").exists() else []
rows.append(("GPU-marked tests", tests[-1] if tests else "no output", "all pass"))
step = load("step_cost.json")
if step:
    r = step["ratios"]
    rows.append(("SAM/base step time", f"{r['sam_over_base']:.3f}", "<= 2.05"))
    rows.append(("CSAM/SAM step time", f"{r['csam_over_sam']:.3f}", "<= 1.02"))
    extra = r.get("sam_extra_memory_in_param_copies", r["sam_extra_state_in_param_copies"])
    rows.append(("SAM extra memory (param copies)", f"{extra:.2f}", "<= 1"))
else:
    rows.append(("step cost", "missing (time limit or error: see check.log)", ""))
tp = load("throughput.json")
for method in ("sgd", "sam", "csam"):
    r = (tp or {}).get("results", {}).get(method)
    value = f"{r['ratio']:.2f}" if r else "missing (see check.log)"
    rows.append((f"{method} sharpcal/reference img/s", value, ">= 3 on H100"))
floor = (tp or {}).get("floor") or {}
pct = floor.get("sharpcal_sam_percent_of_floor")
rows.append(("SAM % of bf16 compute floor", "n/a" if pct is None else f"{pct:.1f}%", ">= 25%"))
tpg = load("trials_per_gpu.json")
for level in ("1", "2", "4"):
    r = (tpg or {}).get("results", {}).get(level)
    if r:
        value = (
            f"{r['trials_per_hour']:.0f}/h ({r['trials_per_hour_ratio_vs_1']:.2f}x), "
            f"{r['steady_images_per_s']:.0f} img/s ({r['images_per_s_ratio_vs_1']:.2f}x)"
        )
    else:
        value = "missing or skipped (see check.log)"
    rows.append((f"{level} trial(s) per device", value, "ratio > 1 pays"))
device = (tpg or tp or step or {}).get("device", "unknown device")
print(f"== summary: {device}, {seconds} s in all, exit status {status}")
width = max(len(r[0]) for r in rows)
for name, value, target in rows:
    print(f"{name:<{width}}  {value:>44}  {target}")
PY
exit $status
