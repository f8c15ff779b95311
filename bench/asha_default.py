"""The default study with and without MO-ASHA, side by side: the same space, the same number of
trials, several study seeds (the sampler's seed); epochs trained, wall time and the hypervolume
of the front found, on val (what the search sees) and on test (the same trials' test values).

Each study runs through the ``Study`` API on this machine's Ray (local, loopback), in a temporary
storage and MLflow store. Hypervolume: ``study.analysis.hypervolume`` against the reference point fixed
before any run, (accuracy 0, ECE 1), in minimised form; the test front is the non-dominated set
of the completed trials' (test accuracy, test ECE).

    python bench/asha_default.py [--seeds 0 1 2] [--grace 1] [--eta 3] [--json bench/out/asha.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from search_spaces import read_space_yaml, resolve_space
from study import Study
from study.analysis.hypervolume import hypervolume, reference_point

REFERENCE = reference_point(["val_accuracy", "val_ece"])


def run_one(space: dict[str, Any], name: str, root: Path) -> dict[str, float]:
    """Run one study; its epochs, wall time and val/test hypervolume."""
    study = Study.create(
        space, name=name, storage=str(root / "studies"), tracking_uri=f"sqlite:///{root}/mlflow.db"
    )
    start = time.perf_counter()
    study.run()
    seconds = time.perf_counter() - start
    trials = study.optuna().get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    val = [[-t.values[0], t.values[1]] for t in done]
    test = [[-t.user_attrs["test_accuracy"], t.user_attrs["test_ece"]] for t in done]
    return {
        "seconds": seconds,
        "epochs": sum(float(t.user_attrs.get("epoch", 0)) for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "hv_val": hypervolume(val, REFERENCE),
        "hv_test": hypervolume(test, REFERENCE),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--grace", type=int, default=1)
    parser.add_argument("--eta", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    base = read_space_yaml(resolve_space("default"))
    variants = {
        "none": {**base, "scheduler": "none"},
        "asha": {
            **base,
            "scheduler": "asha",
            "asha": {"grace_period": args.grace, "reduction_factor": args.eta},
        },
    }
    results: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:  # the two variants of one seed back to back: same machine state
            for variant, space in variants.items():
                name = f"{variant}-{seed}"
                results[variant].append(run_one({**space, "seed": seed}, name, Path(tmp)))
                print(name, json.dumps({k: round(v, 4) for k, v in results[variant][-1].items()}))
    print(f"\ndefault space, {base['samples']} trials of {base['fixed']['epochs']} epochs, "
          f"study seeds {args.seeds}; asha grace {args.grace}, eta {args.eta}")  # fmt: skip
    print(f"{'':<6} {'epochs':>8} {'wall s':>8} {'pruned':>7} {'HV val':>8} {'HV test':>8}")
    for variant, rows in results.items():
        means = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
        print(
            f"{variant:<6} {means['epochs']:8.1f} {means['seconds']:8.1f} {means['pruned']:7.1f} "
            f"{means['hv_val']:8.4f} {means['hv_test']:8.4f}"
        )
    none, asha = results["none"], results["asha"]
    for key in ("epochs", "seconds", "hv_val", "hv_test"):
        ratio = statistics.fmean(a[key] / n[key] for a, n in zip(asha, none, strict=True))
        print(f"asha / none, {key}: {ratio:.3f} (mean over seeds)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
