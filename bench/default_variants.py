"""The default study run for real in several variants side by side — no scheduler, MO-ASHA, late
checkpoints — the same space, the same number of trials, several study seeds (the sampler's
seed): epochs trained, wall time and the hypervolume of the front found, on val (what the search
sees) and on test (the same points' test values).

Each study runs through the ``Study`` API on this machine's Ray (local, loopback), in a temporary
storage and MLflow store. A study with late checkpoints is scored on every kept (trial, epoch)
pair (``study.analysis.epochs.kept_epochs``: what its front is taken over), each with that
epoch's own test values; the others on their completed trials. Hypervolumes
(``study.analysis.hypervolume``, minimised form) against two reference points fixed before any
run: (accuracy 0, ECE 1), and the replay's tighter one for this space (``_tight``; fixed from
``bench/tables/default.parquet`` by ``bench/replay_search.py`` before any replay: a point adds
volume only where it beats most of the table's configurations on both). On test, of all the
points (``hv_test``) and of the test values of the val front's points (``hv_test_front``: what a
user who picks on val gets; more points can only add to the former).

    python bench/default_variants.py [--variants none asha late] [--seeds 0 1 2] [--late 0.25]
        [--grace 1] [--eta 3] [--json bench/out/default_variants.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from search_spaces import read_space_yaml, resolve_space
from search_spaces.schema import load_space
from study import Study
from study.analysis.epochs import kept_epochs
from study.analysis.hypervolume import hypervolume, reference_point
from study.search.rungs import nondominated_fronts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay_search import TABLE, ReplayTable  # noqa: E402  (a sibling script)

REFERENCE = reference_point(["val_accuracy", "val_ece"])
NUMBERS = ("seconds", "epochs", "pruned", "points", "hv_val", "hv_test", "hv_val_tight",
           "hv_test_tight", "hv_test_front", "hv_test_front_tight")  # fmt: skip


def run_one(space: dict[str, Any], name: str, root: Path, tight: list[float]) -> dict[str, Any]:
    """Run one study; its epochs, wall time, kept points and val/test hypervolume against both
    reference points (``tight``: the replay table's)."""
    study = Study.create(
        space, name=name, storage=str(root / "studies"), tracking_uri=f"sqlite:///{root}/mlflow.db"
    )
    start = time.perf_counter()
    study.run()
    seconds = time.perf_counter() - start
    trials = study.optuna().get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    points = [p for t in done for p in kept_epochs(t, study.space)]
    val = [[-p.user_attrs["val_accuracy"], p.user_attrs["val_ece"]] for p in points]
    # a trial the chance guard stopped has no test values: its diverged ones, which add nothing
    test = [[-p.user_attrs.get("test_accuracy", 0.0), p.user_attrs.get("test_ece", 1.0)] for p in points]  # fmt: skip
    return {
        "seconds": seconds,
        "epochs": sum(float(t.user_attrs.get("epoch", 0)) for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "points": len(points),
        "hv_val": hypervolume(val, REFERENCE),
        "hv_test": hypervolume(test, REFERENCE),
        "hv_val_tight": hypervolume(val, tight),
        "hv_test_tight": hypervolume(test, tight),
        "hv_test_front": front_test_hypervolume(val, test, REFERENCE),
        "hv_test_front_tight": front_test_hypervolume(val, test, tight),
        "val": val,
        "test": test,
    }


def front_test_hypervolume(
    val: list[list[float]], test: list[list[float]], reference: list[float]
) -> float:
    """The hypervolume of the test values of the val front's points: what a user who picks on val
    gets (more points can only add to the hypervolume of all the test values)."""
    front = nondominated_fronts(np.array(val, dtype=float))[0]
    return hypervolume([test[i] for i in front], reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", nargs="+", choices=["none", "asha", "late"], default=["none", "asha", "late"]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--late", type=float, default=0.25, help="late_checkpoints of 'late'")
    parser.add_argument("--grace", type=int, default=1)
    parser.add_argument("--eta", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    base = read_space_yaml(resolve_space("default"))
    tight = ReplayTable(pd.read_parquet(TABLE), load_space("default")).reference
    plain = {**base, "scheduler": "none", "late_checkpoints": "off"}
    known = {
        "none": plain,
        "asha": {
            **plain,
            "scheduler": "asha",
            "asha": {"grace_period": args.grace, "reduction_factor": args.eta},
        },
        "late": {**plain, "late_checkpoints": args.late},
    }
    variants = {name: known[name] for name in args.variants}
    results: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:  # the variants of one seed back to back: same machine state
            for variant, space in variants.items():
                name = f"{variant}-{seed}"
                results[variant].append(run_one({**space, "seed": seed}, name, Path(tmp), tight))
                shown = {k: round(v, 4) for k, v in results[variant][-1].items() if k in NUMBERS}
                print(name, json.dumps(shown))
    print(f"\ndefault space, {base['samples']} trials of {base['fixed']['epochs']} epochs, "
          f"study seeds {args.seeds}; asha grace {args.grace}, eta {args.eta}; "
          f"late_checkpoints {args.late}")  # fmt: skip
    print(f"tight reference (val accuracy, val ECE): {-tight[0]:.4f}, {tight[1]:.4f}")
    print(f"{'':<6} " + " ".join(f"{k:>13}" for k in NUMBERS))
    for variant, rows in results.items():
        print(f"{variant:<6} " + " ".join(f"{statistics.fmean(r[k] for r in rows):13.4f}" for k in NUMBERS))  # fmt: skip
    first, *others = results
    for other in others:
        for key in NUMBERS[:2] + NUMBERS[4:]:
            pairs = zip(results[other], results[first], strict=True)
            ratios = [o[key] / f[key] for o, f in pairs if f[key] > 0]
            ratio = statistics.fmean(ratios) if ratios else float("nan")
            print(f"{other} / {first}, {key}: {ratio:.3f} (mean of per-seed ratios)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
