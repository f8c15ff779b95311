"""Per-sample evidence: one Parquet row per evaluated sample, so calibration can be re-analysed
without retraining.

Layout (``trainables.layout``): a hive-partitioned dataset
``<study data>/evidence/trial_id=<id>/split=<split>/`` of
zstd-compressed files ``epoch-<NNNN>.parquet``. The partition keys live in the path, not in the
files: read with ``open_evidence`` (or DuckDB's ``read_parquet(..., hive_partitioning=true,
hive_types={'trial_id': VARCHAR, 'split': VARCHAR})``). Each file is written under a hidden name
(``_tmp-...``, which dataset discovery skips) and renamed into place, so a killed writer leaves no
partial file visible, and a retried trial overwrites its own files instead of duplicating rows.
Works on any ``pyarrow.fs`` filesystem: local paths and ``s3://`` URIs alike.

Schema version 2 added ``corruption`` and ``severity`` (null outside the corruption splits of
``trainables.evaluation.ood``); ``open_evidence`` reads version-1 files with those columns null.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch

from trainables.layout import partition_uri, resolve_fs, write_whole

SCHEMA_VERSION = "2"
SCHEMA_KEY = b"sharpcal.evidence.schema_version"
MAX_PROBS_CLASSES = 100
PARTITIONING = ds.partitioning(
    pa.schema([("trial_id", pa.string()), ("split", pa.string())]), flavor="hive"
)
FILE_SCHEMA = pa.schema(
    [
        ("study", pa.string()),
        ("epoch", pa.int32()),
        ("sample_id", pa.int64()),
        ("label", pa.int32()),
        ("pred", pa.int32()),
        ("confidence", pa.float32()),
        ("true_prob", pa.float32()),
        ("correct", pa.bool_()),
        ("temperature", pa.float32()),
        ("confidence_ts", pa.float32()),
        ("probs", pa.list_(pa.float16())),
        ("corruption", pa.string()),
        ("severity", pa.int8()),
    ],
    metadata={SCHEMA_KEY: SCHEMA_VERSION.encode()},
)


def evidence_table(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    study: str,
    epoch: int,
    temperature: float,
    with_probs: bool | None = None,
    sample_ids: np.ndarray | None = None,
    corruption: np.ndarray | None = None,
    severity: np.ndarray | None = None,
) -> pa.Table:
    """The rows of one split at one epoch, computed on the logits' device and copied once.

    ``sample_ids`` default to the row index; ``corruption`` (str) and ``severity`` (int) are
    per-row columns of corruption splits, null when not given.
    """
    logits = logits.float()
    probs = logits.softmax(dim=1)
    confidence, pred = probs.max(dim=1)
    # an OOD set's labels can lie outside the model's classes (held-out classes, digits under a
    # model of fewer classes): no probability is the label's there (NaN), no row is correct
    inside = labels < probs.shape[1]
    true_prob = probs.gather(1, torch.where(inside, labels, 0)[:, None]).squeeze(1)
    true_prob = torch.where(inside, true_prob, torch.nan)
    confidence_ts = (logits / temperature).softmax(dim=1).max(dim=1).values
    n, num_classes = probs.shape
    if with_probs is None:
        with_probs = num_classes <= MAX_PROBS_CLASSES
    columns: dict[str, Any] = {
        "study": pa.array([study] * n, pa.string()),
        "epoch": pa.array(torch.full((n,), epoch, dtype=torch.int32).numpy()),
        "sample_id": pa.array(
            torch.arange(n, dtype=torch.int64).numpy()
            if sample_ids is None
            else np.asarray(sample_ids, dtype=np.int64)
        ),
        "label": pa.array(labels.to(torch.int32).cpu().numpy()),
        "pred": pa.array(pred.to(torch.int32).cpu().numpy()),
        "confidence": pa.array(confidence.cpu().numpy()),
        "true_prob": pa.array(true_prob.cpu().numpy()),
        "correct": pa.array((pred == labels).cpu().numpy()),
        "temperature": pa.array(torch.full((n,), temperature, dtype=torch.float32).numpy()),
        "confidence_ts": pa.array(confidence_ts.cpu().numpy()),
    }
    if with_probs:
        flat = pa.array(probs.half().cpu().numpy().reshape(-1))
        offsets = pa.array(
            torch.arange(0, n * num_classes + 1, num_classes, dtype=torch.int32).numpy()
        )
        columns["probs"] = pa.ListArray.from_arrays(offsets, flat)
    else:
        columns["probs"] = pa.nulls(n, pa.list_(pa.float16()))
    columns["corruption"] = (
        pa.nulls(n, pa.string()) if corruption is None else pa.array(corruption, pa.string())
    )
    columns["severity"] = (
        pa.nulls(n, pa.int8()) if severity is None else pa.array(severity, pa.int8())
    )
    return pa.table(columns, schema=FILE_SCHEMA)


def write_evidence(table: pa.Table, root_uri: str, trial_id: str, split: str, epoch: int) -> str:
    """Write one split's rows atomically; returns the final path (inside its filesystem)."""
    _, root = resolve_fs(root_uri)
    final = f"{partition_uri(root, trial_id, split)}/epoch-{epoch:04d}.parquet"
    target = f"{root_uri.rstrip('/')}{final[len(root.rstrip('/')) :]}"
    write_whole(target, lambda out: pq.write_table(table, out, compression="zstd"), ".parquet")
    return final


def open_evidence(root_uri: str) -> ds.Dataset:
    """The whole evidence dataset of a study, ``trial_id`` and ``split`` as string columns.

    The schema is the current ``FILE_SCHEMA`` whatever file comes first, so files of an older
    schema version read with the columns they lack as nulls.
    """
    fs, root = resolve_fs(root_uri)
    return ds.dataset(
        root,
        schema=pa.unify_schemas([FILE_SCHEMA, PARTITIONING.schema]),
        filesystem=fs,
        format="parquet",
        partitioning=PARTITIONING,
        exclude_invalid_files=False,
        ignore_prefixes=["_", "."],
    )
