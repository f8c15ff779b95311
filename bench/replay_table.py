"""A study's learning curves as one replayable table (issue 23, item 3; issue 36, item 1): a row
per trial and epoch with the configuration (every setting the study's space varies, from its
``search`` and its ``points``, and the seed), the epoch's training time (``epoch_seconds``) and
wall time (``wall_seconds``: with val and test evaluation), every objective metric on val and on
test, and the signals beside them that an early-stopping rule may rank on: the training loss,
the temperature fitted on val (with ``test_every_epoch``) and the signed over-confidence (mean
confidence minus accuracy) on val and on test.

Made for ``search_spaces/table-default.yaml`` (the default space's grid, ``test_every_epoch``):

    study run table-default --name table --storage studies      # hours on 2 cores, see BENCHMARKS.md
    python bench/replay_table.py table --storage studies --out bench/tables/default.parquet

Reads what the trials reported to Tune (each trial's ``result.json`` under the study's ``tune/``,
local or on object storage) and which configuration each trial ran (the Optuna database). A
configuration's id is the Optuna number of its first seed. Only completed trials are kept.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from search_spaces.schema import Space
from study import Study
from study.storage.records import REPEAT_OF_ATTR, STATUS_ATTR, TRIAL_ID_ATTR, trial_settings
from trainables.layout import resolve_fs
from trainables.metrics.objectives import DIRECTIONS

METRICS = [m.removeprefix("val_") for m in DIRECTIONS if m.startswith("val_")] + ["overconfidence"]
SIGNALS = ("train_loss", "temperature")  # an epoch's, beside its metrics


def varied_settings(space: Space) -> list[str]:
    """The settings ``space`` varies (searched, or set by a point), in order, then ``seed``."""
    names = dict.fromkeys([*space.search, *(k for point in space.points for k in point)])
    names.pop("seed", None)
    return [*names, "seed"]


def trial_results(tune_uri: str) -> dict[str, list[dict[str, Any]]]:
    """Each Tune trial's reported rows (its ``result.json``), by Tune trial id."""
    fs, root = resolve_fs(tune_uri)
    rows: dict[str, list[dict[str, Any]]] = {}
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File and info.base_name == "result.json":
            with fs.open_input_stream(info.path) as src:
                lines = src.read().decode().splitlines()
            for row in (json.loads(line) for line in lines if line.strip()):
                rows.setdefault(row["trial_id"], []).append(row)
    return rows


def study_table(name: str, storage: str) -> pa.Table:
    """The table of study ``name``: one row per completed trial and epoch, epochs in order (a
    trial restarted from a checkpoint keeps its last report of each epoch)."""
    study = Study.load(name, storage)
    results = trial_results(study.paths.tune)
    default_seed = study.space.train_config().seed  # a first seed's settings name none
    settings_names = varied_settings(study.space)
    records = []
    for trial in study.optuna().get_trials(deepcopy=False):
        if trial.user_attrs.get(STATUS_ATTR) != "completed":
            continue
        settings = {"seed": default_seed, **trial_settings(trial)}
        config = int(trial.user_attrs.get(REPEAT_OF_ATTR, trial.number))
        by_epoch = {int(r["epoch"]): r for r in results.get(trial.user_attrs[TRIAL_ID_ATTR], [])}
        previous = 0.0
        for epoch in sorted(by_epoch):
            row = by_epoch[epoch]
            record: dict[str, Any] = {"config": config, "trial": trial.number, "epoch": epoch}
            record.update({k: settings.get(k) for k in settings_names})
            record["epoch_seconds"] = row["train_seconds"] - previous
            record["train_seconds"] = previous = row["train_seconds"]
            # the epoch's wall time in the trial: training, val and test evaluation, reporting
            record["wall_seconds"] = row.get("time_this_iter_s")
            record.update({k: row.get(k) for k in SIGNALS})
            for split in ("val", "test"):
                for metric in METRICS:
                    record[f"{split}_{metric}"] = row.get(f"{split}_{metric}")
            records.append(record)
    return pa.Table.from_pylist(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--storage", default="studies")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    table = study_table(args.name, args.storage)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out, compression="zstd")
    configs = len(set(table.column("config").to_pylist()))
    print(f"{args.out}: {table.num_rows} rows, {configs} configurations, "
          f"{args.out.stat().st_size / 1e6:.2f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
