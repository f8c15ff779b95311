"""Parquet evidence: schema, atomic writes, readers (pyarrow.dataset, DuckDB), ECE recomputed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from trainables.evaluation.evidence import (
    SCHEMA_KEY,
    SCHEMA_VERSION,
    evidence_table,
    open_evidence,
    write_evidence,
)
from trainables.metrics import calibration


def _logits(n: int = 200, k: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 3, torch.randint(0, k, (n,), generator=g)


def test_table_columns_types_and_values():
    logits, labels = _logits()
    table = evidence_table(logits, labels, study="s", epoch=3, temperature=1.5)
    assert table.num_rows == 200
    types = {f.name: str(f.type) for f in table.schema}
    assert types == {
        "study": "string",
        "epoch": "int32",
        "sample_id": "int64",
        "label": "int32",
        "pred": "int32",
        "confidence": "float",
        "true_prob": "float",
        "correct": "bool",
        "temperature": "float",
        "confidence_ts": "float",
        "probs": "list<item: halffloat>",
        "corruption": "string",
        "severity": "int8",
    }
    assert table.column("corruption").null_count == table.column("severity").null_count == 200
    probs = logits.softmax(1)
    col = table.to_pydict()
    assert col["sample_id"] == list(range(200))
    assert col["pred"] == probs.argmax(1).tolist()
    torch.testing.assert_close(torch.tensor(col["confidence"]), probs.max(1).values)
    torch.testing.assert_close(torch.tensor(col["true_prob"]), probs[torch.arange(200), labels])
    ts = (logits / 1.5).softmax(1).max(1).values
    torch.testing.assert_close(torch.tensor(col["confidence_ts"]), ts)
    torch.testing.assert_close(torch.tensor(col["probs"]), probs, atol=1e-3, rtol=1e-2)


def test_written_dataset_reads_back_with_pyarrow_and_duckdb(tmp_path):
    root = str(tmp_path / "evidence")
    truth = {}
    for trial in ("00000001", "abc"):
        for split in ("val", "test"):
            logits, labels = _logits(seed=len(truth))
            truth[(trial, split)] = calibration.ece(logits.softmax(1), labels).item()
            table = evidence_table(logits, labels, study="s", epoch=2, temperature=1.0)
            path = write_evidence(table, root, trial, split, epoch=2)
            assert pq.read_schema(path).metadata[SCHEMA_KEY] == SCHEMA_VERSION.encode()
    dataset = open_evidence(root)
    table = dataset.to_table()
    assert table.num_rows == 4 * 200
    assert set(table.column("trial_id").to_pylist()) == {"00000001", "abc"}  # strings, not ints
    frame = table.to_pandas()
    for (trial, split), expected in truth.items():
        rows = frame[(frame.trial_id == trial) & (frame.split == split)]
        recomputed = calibration.ece(
            torch.from_numpy(np.stack(rows.probs.to_list()).astype(np.float32)),
            torch.tensor(rows.label.to_numpy(), dtype=torch.int64),
        ).item()
        assert recomputed == pytest.approx(expected, abs=2e-3)  # probs are float16
    count = duckdb.sql(
        f"select count(*), count(distinct trial_id) from read_parquet('{root}/**/*.parquet', "
        "hive_partitioning=true, hive_types={'trial_id': VARCHAR, 'split': VARCHAR})"
    ).fetchall()
    assert count == [(800, 2)]


def test_rewriting_an_epoch_replaces_rows_instead_of_duplicating(tmp_path):
    root = str(tmp_path / "ev")
    logits, labels = _logits()
    for _ in range(2):  # a retried trial writes the same epoch again
        write_evidence(
            evidence_table(logits, labels, study="s", epoch=1, temperature=1.0),
            root,
            "t1",
            "test",
            epoch=1,
        )
    assert open_evidence(root).count_rows() == 200


@pytest.mark.slow  # a writer process, killed
def test_a_writer_killed_mid_write_leaves_no_partial_rows(tmp_path):
    root = tmp_path / "ev"
    logits, labels = _logits()
    write_evidence(
        evidence_table(logits, labels, study="s", epoch=1, temperature=1.0),
        str(root),
        "done",
        "test",
        epoch=1,
    )
    script = textwrap.dedent(f"""
        import os, signal, pyarrow.parquet as pq, torch
        from trainables.evaluation.evidence import evidence_table, write_evidence
        real = pq.write_table
        def write_then_die(table, out, **kw):
            out.write(b"PAR1 half a file")
            out.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        pq.write_table = write_then_die
        z = torch.randn(5000, 10); y = torch.randint(0, 10, (5000,))
        write_evidence(evidence_table(z, y, study="s", epoch=1, temperature=1.0),
                       {str(root)!r}, "killed", "test", epoch=1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd())
    assert proc.returncode == -signal.SIGKILL
    leftovers = list((root / "trial_id=killed" / "split=test").iterdir())
    assert leftovers and all(p.name.startswith("_tmp-") for p in leftovers)  # only the hidden temp
    dataset = open_evidence(str(root))
    assert dataset.count_rows() == 200
    assert set(dataset.to_table().column("trial_id").to_pylist()) == {"done"}
