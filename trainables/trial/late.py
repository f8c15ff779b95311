"""Late checkpoints (issue 36, item 3): in a trial's last fraction of epochs, every epoch's metrics
are measured (val and test) and the epochs on the trial's own val front are kept, each with its
checkpoint and its per-sample evidence, so that the study's front can be taken over (trial, epoch)
pairs: a trial's best-calibrated model is often not its last.

Kept under the trial's files (``trainables.layout``)::

    trials/<id>/epochs/front.json              the trial's own front: one entry per kept epoch
    trials/<id>/epochs/epoch-<NNNN>/state.pt   the checkpoint of each kept epoch but the last
                                               (the last is Tune's own checkpoint)

An epoch that a later one dominates loses its checkpoint and (under ``evidence: last``) its
evidence. Each file is written under a hidden name and moved into place, and ``front.json`` is
written after the files it names, so a killed trial leaves no entry without its checkpoint; a
trial resumed from an earlier checkpoint drops the entries of the epochs it will train again.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from typing import Any

import torch

from trainables.engine.loop import EpochRecord, Trainer
from trainables.layout import (
    evidence_uri,
    join,
    partition_uri,
    resolve_fs,
    trial_artifacts_uri,
    write_whole,
)
from trainables.metrics.objectives import signed
from trainables.trial.outputs import EVIDENCE_SPLITS, TrialContext, write_epoch_evidence

LATE_FRONT_KEY = "late_front"  # the result key: the trial's own front so far, as JSON
EPOCHS_DIR = "epochs"
FRONT_FILE = "front.json"


def first_late_epoch(epochs: int, fraction: float) -> int:
    """The first epoch of a run's last ``fraction`` of ``epochs`` (at least its last epoch);
    0 when ``fraction`` is 0 (late checkpoints off)."""
    if fraction <= 0:
        return 0
    return epochs - max(1, math.ceil(fraction * epochs - 1e-9)) + 1


def front_keys(objective_weight: float | None, metrics: tuple[str, ...]) -> tuple[str, ...]:
    """The values an epoch is ranked on: the Pareto objective's metrics, or the weighted
    objective (``objective``)."""
    return ("objective",) if objective_weight is not None else metrics


def better_values(entry: dict[str, Any], keys: tuple[str, ...]) -> list[float]:
    """``entry``'s values of ``keys``, each turned so that higher is better."""
    return [float(entry[k]) if k == "objective" else signed(k, float(entry[k])) for k in keys]


def own_front(entries: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """The entries no other entry dominates (all values at least as good, one better), in epoch
    order; equal entries are all kept."""
    values = [better_values(e, keys) for e in entries]

    def dominated(i: int) -> bool:
        return any(
            all(a >= b for a, b in zip(other, values[i], strict=True)) and other != values[i]
            for other in values
        )

    return sorted((e for i, e in enumerate(entries) if not dominated(i)), key=lambda e: e["epoch"])


def checkpoint_uri(data_uri: str, trial_id: str, epoch: int) -> str:
    """Where the checkpoint of a kept epoch (not the last) of a trial lives."""
    return join(
        trial_artifacts_uri(data_uri, trial_id), EPOCHS_DIR, f"epoch-{epoch:04d}", "state.pt"
    )


def front_uri(data_uri: str, trial_id: str) -> str:
    """Where a trial's own front (``front.json``) lives."""
    return join(trial_artifacts_uri(data_uri, trial_id), EPOCHS_DIR, FRONT_FILE)


def _write(uri: str, data: bytes) -> None:
    write_whole(uri, lambda out: out.write(data))


def _delete(uri: str) -> None:
    fs, path = resolve_fs(uri)
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_file(path)


def read_front(data_uri: str, trial_id: str) -> list[dict[str, Any]]:
    """A trial's own front as last written (empty when none was)."""
    fs, path = resolve_fs(front_uri(data_uri, trial_id))
    try:
        with fs.open_input_stream(path) as f:
            return list(json.loads(f.read()))
    except (FileNotFoundError, OSError, ValueError):
        return []


def load_epoch_checkpoint(data_uri: str, trial_id: str, epoch: int) -> dict[str, Any] | None:
    """The kept checkpoint of epoch ``epoch`` of a trial, or None when it was not kept."""
    fs, path = resolve_fs(checkpoint_uri(data_uri, trial_id, epoch))
    try:
        with fs.open_input_file(path) as f:
            data = f.read()
    except (FileNotFoundError, OSError):
        return None
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class LateEpochs:
    """One trial's late epochs: after each epoch of the window, ``observe`` measures it, keeps it
    when it is on the trial's own val front (dropping what it dominates) and returns the front to
    report. Off (``first == 0``) it does nothing."""

    def __init__(self, ctx: TrialContext, trial_id: str, trainer: Trainer) -> None:
        self.ctx, self.data_uri, self.trial_id = ctx, ctx.study_uri, trial_id
        self.keys = front_keys(ctx.objective_weight, ctx.objective_metrics)
        self.evidence_every = ctx.evidence == "every"
        self.last = trainer.cfg.last_epoch
        self.first = first_late_epoch(self.last, ctx.late_fraction) if ctx.study_uri else 0
        done = trainer.epochs_done
        found = read_front(self.data_uri, trial_id) if self.first else []
        self.front = [e for e in found if e["epoch"] <= done]

    def observe(self, trainer: Trainer, record: EpochRecord, metrics: dict[str, Any]) -> str | None:
        """Keep epoch ``record.epoch`` if it is on the trial's own front (``metrics``: what the
        trial reports for it); the front as JSON, or None outside the window."""
        if not self.first or record.epoch < self.first or trainer.diverged:
            return None
        entry = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        entry["epoch"] = record.epoch
        if any(k not in entry for k in self.keys):
            return json.dumps(self.front)
        before = {e["epoch"] for e in self.front}
        front = own_front(
            [*[e for e in self.front if e["epoch"] != record.epoch], entry], self.keys
        )
        kept = {e["epoch"] for e in front}
        if record.epoch in kept:
            self._keep(trainer, record)
        text = json.dumps(front)
        _write(front_uri(self.data_uri, self.trial_id), text.encode())
        for epoch in before - kept:
            self._drop(epoch)
        self.front = front
        return text

    def _keep(self, trainer: Trainer, record: EpochRecord) -> None:
        epoch = record.epoch
        if epoch == self.last:  # Tune's checkpoint and the last epoch's evidence
            return
        buffer = io.BytesIO()
        torch.save(trainer.state_dict(), buffer)
        _write(checkpoint_uri(self.data_uri, self.trial_id, epoch), buffer.getvalue())
        if self.evidence_every:
            return
        temperature = record.test.get("temperature") or trainer.fit_temperature()
        write_epoch_evidence(trainer, self.ctx, self.trial_id, epoch, temperature)

    def _drop(self, epoch: int) -> None:
        if epoch == self.last:
            return
        fs, path = resolve_fs(checkpoint_uri(self.data_uri, self.trial_id, epoch))
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.delete_dir(path.rsplit("/", 1)[0])
        if self.evidence_every:
            return
        for split in EVIDENCE_SPLITS:
            root = partition_uri(evidence_uri(self.data_uri), self.trial_id, split)
            _delete(f"{root}/epoch-{epoch:04d}.parquet")
