#!/usr/bin/env bash
# One prepared GPU check: the GPU-marked tests and the GPU benchmarks, a summary table last.
# Run on a CUDA machine from the repository root after `make test-deps` (or with the project's
# .venv carried over):   bash bench/gpu_check.sh [OUT_DIR]
# Budget: a few minutes on an H100. SHARPCAL_GPU_CHECK_SMOKE=1 runs tiny sizes (also on CPU) to
# check the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${1:-bench/out/gpu_check}
mkdir -p "$OUT"
SMOKE=${SHARPCAL_GPU_CHECK_SMOKE:-0}

if [ "$SMOKE" != 1 ] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device here; set SHARPCAL_GPU_CHECK_SMOKE=1 for a CPU smoke run" >&2
  exit 2
fi
if [ "$SMOKE" = 1 ]; then
  STEP_ARGS=(--batch 8 --steps 2 --warmup 1)
  TP_ARGS=(--batch 8 --steps 2 --warmup 1 --repeats 2)
  TPH_ARGS=(--smoke --trials 2)
else
  STEP_ARGS=()
  TP_ARGS=()
  TPH_ARGS=()
fi

status=0
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "| torch", torch.__version__)' | tee "$OUT/device.txt"

echo "== GPU-marked tests"
if [ "$SMOKE" = 1 ]; then
  echo "(skipped in smoke mode)" | tee "$OUT/tests.txt"
else
  timeout 300 "$PY" -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$OUT/tests.txt" || status=1
fi

echo "== step cost"
timeout 300 "$PY" bench/step_cost.py "${STEP_ARGS[@]}" --json "$OUT/step_cost.json" 2>&1 \
  | tee "$OUT/step_cost.txt" || status=1

echo "== throughput"
timeout 400 "$PY" bench/throughput.py "${TP_ARGS[@]}" --json "$OUT/throughput.json" 2>&1 \
  | tee "$OUT/throughput.txt" || status=1

echo "== trials per hour (1, 2, 4 trials per GPU)"
timeout 240 "$PY" bench/trials_per_hour.py "${TPH_ARGS[@]}" --json "$OUT/trials_per_hour.json" 2>&1 \
  | tee "$OUT/trials_per_hour.txt" || status=1

echo
echo "== summary ($(cat "$OUT/device.txt"))"
"$PY" - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = []
tests = (out / "tests.txt").read_text().strip().splitlines()
rows.append(("GPU-marked tests", tests[-1] if tests else "no output", ""))
try:
    step = json.loads((out / "step_cost.json").read_text())["ratios"]
    rows.append(("SAM/base step time", f"{step['sam_over_base']:.3f}", "<= 2.05"))
    rows.append(("CSAM/SAM step time", f"{step['csam_over_sam']:.3f}", "<= 1.02"))
    extra = step.get("sam_extra_memory_in_param_copies", step["sam_extra_state_in_param_copies"])
    rows.append(("SAM extra memory (param copies)", f"{extra:.2f}", "<= 1"))
except (OSError, KeyError, ValueError) as err:
    rows.append(("step cost", f"missing ({err})", ""))
try:
    tp = json.loads((out / "throughput.json").read_text())
    for method, r in tp["results"].items():
        rows.append((f"{method} sharpcal/reference", f"{r['ratio']:.2f}", ">= 3 on H100"))
    floor = tp.get("floor") or {}
    pct = floor.get("sharpcal_sam_percent_of_floor") if isinstance(floor, dict) else None
    rows.append(("SAM % of bf16 compute floor", "n/a" if pct is None else f"{pct:.1f}%", ">= 25%"))
except (OSError, KeyError, ValueError) as err:
    rows.append(("throughput", f"missing ({err})", ""))
try:
    tph = json.loads((out / "trials_per_hour.json").read_text())
    for level, r in tph["results"].items():
        rows.append(
            (
                f"trials/hour, {level} per device",
                f"{r['trials_per_hour']:.0f} ({r['ratio_vs_1']:.2f}x vs 1)",
                "ratio > 1 pays",
            )
        )
except (OSError, KeyError, ValueError) as err:
    rows.append(("trials per hour", f"missing ({err})", ""))
width = max(len(r[0]) for r in rows)
for name, value, target in rows:
    print(f"{name:<{width}}  {value:>24}  {target}")
PY
exit $status
