"""`study report`: a real small study (files, recomputed metrics, front, ensemble, MLflow) and a
synthetic weighted one (repeat seeds, a diverged trial, no rho/gamma)."""

from __future__ import annotations

import html.parser
import json
import math
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pyarrow.dataset as pads
import pytest
import scipy.stats
import torch
import yaml
from optuna.trial import TrialState

from search_spaces.schema import check_space
from study import Study
from study.analysis.compare import rank_score
from study.analysis.front import best_trials, load_optuna_study
from study.report.writer import StudyView, compute_importances, log_report, write_report
from study.storage.files import load_study_space, load_tracking
from tests.test_ensembles import HandEnsemble, numpy_ece
from trainables.evaluation.evidence import evidence_table, write_evidence
from trainables.layout import StudyPaths, evidence_uri, study_paths
from trainables.metrics import calibration

NAME = "rep"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("pareto.png", "reliability.png", "importance.png", "sensitivity.png")
SPACE = {
    "fixed": {
        "dataset": "digits",
        "train_subset": None,
        "model": "cnn",
        "epochs": 2,
        "batch_size": 64,
        "device": "cpu",
    },
    "search": {
        "method": {"categorical": ["sgd", "sam", "csam"]},
        "lr": {"loguniform": [0.02, 0.2]},
        "rho": {"loguniform": [0.02, 0.3], "when": {"method": ["sam", "asam", "csam"]}},
        "gamma": {"uniform": [0.0, 2.0], "when": {"method": ["csam"]}},
    },
    "samples": 4,
    "concurrency": 2,
    "seed": 3,
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A 4-trial digits study run in-process, then its report (over a stale report directory)."""
    import ray

    root = tmp_path_factory.mktemp("report")
    space_file = root / "space.yaml"
    space_file.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    try:
        study = Study.create(
            str(space_file),
            name=NAME,
            storage=str(root / "studies"),
            tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        )
        assert study.run().errors == 0
    finally:
        ray.shutdown()
    paths = study_paths(NAME, str(root / "studies"))
    paths.report.mkdir(exist_ok=True)  # `study run` may have written one already
    (paths.report / "stale.png").write_bytes(b"from an earlier report")
    tracking = load_tracking(paths)
    md = write_report(paths, NAME, load_study_space(paths, NAME), tracking)
    return SimpleNamespace(
        paths=paths,
        md=md,
        text=md.read_text(),
        data=json.loads((paths.report / "report.json").read_text()),
        study=load_optuna_study(NAME, paths.optuna_url),
        tracking=tracking,
    )


def section_table(text: str, heading: str) -> list[list[str]]:
    """Body rows of the first Markdown table after ``heading``, as stripped cells."""
    lines = text.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_report_files_replace_the_old_report(report):
    assert report.md == report.paths.report / "report.md"
    assert report.text.startswith(f"# Study report: {NAME}")
    for name in FIGURES:
        data = (report.paths.report / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
        assert f"![]({name})" in report.text
    assert not (report.paths.report / "stale.png").exists()


@pytest.mark.slow
def test_best_trial_per_method_recomputes_the_logged_test_metrics(report):
    study, space = report.study, load_study_space(report.paths, NAME)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    methods = report.data["methods"]
    assert methods and set(methods) <= {t.params["method"] for t in complete}
    rows = {r[0]: r for r in section_table(report.text, "## Best trial per method")}
    for method, entry in methods.items():
        same = [t for t in complete if t.params["method"] == method]
        best = max(same, key=lambda t: (rank_score(t, space), -t.number))
        assert entry["trial"] == best.number
        recomputed, logged = entry["per_trial"][0], best.user_attrs
        for key, attr in [("accuracy", "test_accuracy"), ("ece", "test_ece"), ("nll", "test_nll")]:
            assert recomputed[key] == pytest.approx(logged[attr], abs=1e-4), (method, key)
        assert recomputed["ece_ts"] == pytest.approx(logged["test_ece_ts"], abs=1e-4)
        assert rows[method][1] == f"#{best.number}"
        assert f"{recomputed['ece']:.4f}" in rows[method]
    assert "val_accuracy - val_ece" in report.text


@pytest.mark.slow
def test_front_table_lists_optunas_best_trials(report):
    expected = [t.number for t in best_trials(report.study)]
    rows = section_table(report.text, "## Pareto front")
    assert [int(r[0]) for r in rows] == expected
    assert [f["trial"] for f in report.data["front"]] == expected


@pytest.mark.slow
def test_top_k_ensemble_is_the_mean_of_the_stored_probabilities_computed_by_hand(report):
    ensemble = report.data["ensemble"]
    assert ensemble["k"] == 4 and len(ensemble["trials"]) == 4
    tune_ids = [report.study.trials[n].user_attrs["tune_trial_id"] for n in ensemble["trials"]]
    members = [_stored_test(report.paths, i) for i in tune_ids]
    assert all((m.label.to_numpy() == members[0].label.to_numpy()).all() for m in members)
    hand = HandEnsemble.of(members)
    found = ensemble["ensemble"]
    assert found["accuracy"] == pytest.approx(hand.correct.mean(), abs=1e-12)
    assert found["ece"] == pytest.approx(numpy_ece(hand.confidence, hand.correct), abs=1e-9)
    assert found["nll"] == pytest.approx(-np.log(hand.true_prob).mean(), rel=1e-9)
    onehot = np.eye(hand.probs.shape[1])[hand.labels]
    assert found["brier"] == pytest.approx(((hand.probs - onehot) ** 2).sum(1).mean(), rel=1e-9)
    best = report.study.trials[ensemble["trials"][0]].user_attrs
    assert ensemble["best_single"]["accuracy"] == best["test_accuracy"]
    assert ensemble["best_single"]["ece"] == pytest.approx(best["test_ece"], abs=1e-6)
    assert ensemble["best_single"]["nll"] == pytest.approx(best["test_nll"], rel=1e-5)
    accuracies = [report.study.trials[n].user_attrs["test_accuracy"] for n in ensemble["trials"]]
    assert ensemble["mean_single"]["accuracy"] == pytest.approx(np.mean(accuracies), abs=1e-7)
    rows = section_table(report.text, "## Ensemble of the top-4")
    assert len(rows) == 3 and rows[2][0].startswith("ensemble")
    assert rows[2][1] == f"{found['accuracy']:.4f}"


@pytest.mark.slow
def test_report_is_logged_to_the_parent_mlflow_run(report):
    from mlflow.tracking import MlflowClient

    info = json.loads(report.paths.tracking.read_text())
    client = MlflowClient(info["tracking_uri"])
    listed = [a.path for a in client.list_artifacts(info["parent_run_id"], "report")]
    assert "report/report.md" in listed
    assert "report/pareto.png" in listed


def test_mlflow_failure_only_warns(tmp_path, capsys):
    (tmp_path / "report.md").write_text("# x\n")
    tracking = {"tracking_uri": "nosuchscheme://nowhere", "parent_run_id": "0" * 32}
    assert log_report(tmp_path, tracking) is False
    assert "warning: could not log the report to MLflow" in capsys.readouterr().err


def test_importances_need_two_trials_and_two_params():
    space = check_space(dict(SPACE), "test")
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    trial.suggest_float("lr", 0.02, 0.2, log=True)
    study.tell(trial, [0.9, 0.1])
    view = StudyView(NAME, space, study, completed=[], evidence={})
    assert "at least 2 completed trials" in compute_importances(view)
    single = space.model_copy(update={"search": {"lr": space.search["lr"]}})
    study.enqueue_trial({"lr": 0.05})
    trial = study.ask()
    trial.suggest_float("lr", 0.02, 0.2, log=True)
    study.tell(trial, [0.8, 0.2])
    view = StudyView(NAME, single, study, completed=[], evidence={})
    assert "nothing to compare" in compute_importances(view)


def _synthetic_trial(
    study: optuna.Study, paths: StudyPaths, params: dict, tune_id: str, value: float
) -> None:
    """A told trial with random-logit test evidence (or none, for a diverged one)."""
    study.enqueue_trial(params)
    trial = study.ask()
    trial.suggest_float("lr", 0.02, 0.2, log=True)
    trial.suggest_categorical("seed", [0, 1])
    diverged = value < 0
    trial.set_user_attr("status", "diverged" if diverged else "completed")
    trial.set_user_attr("tune_trial_id", tune_id)
    trial.set_user_attr("val_accuracy", 0.0 if diverged else value + 0.1)
    trial.set_user_attr("val_ece", 1.0 if diverged else 0.1)
    if not diverged:
        # one test set for every trial (the same samples: an ensemble can average them)
        labels = torch.randint(0, 10, (60,), generator=torch.Generator().manual_seed(7))
        gen = torch.Generator().manual_seed(int(value * 1000))
        for epoch in (1, 2):  # only the last epoch counts
            logits = 3 * torch.randn(60, 10, generator=gen)
            table = evidence_table(logits, labels, study="w", epoch=epoch, temperature=1.5)
            write_evidence(table, evidence_uri(str(paths.root)), tune_id, "test", epoch)
        metrics = calibration.calibration_report(logits, labels, 10, temperature=1.5)
        trial.set_user_attr("test_ece", metrics["ece"])
        trial.set_user_attr("test_accuracy", metrics["accuracy"])
    study.tell(trial, value)


def test_weighted_study_with_repeat_seeds_and_a_diverged_trial(tmp_path):
    space = check_space(
        {
            "fixed": {**SPACE["fixed"], "method": "sam"},
            "search": {"lr": {"loguniform": [0.02, 0.2]}, "seed": {"categorical": [0, 1]}},
            "objective": {"type": "weighted"},
            "samples": 4,
        },
        "test",
    )
    paths = StudyPaths(tmp_path / "w", str(tmp_path / "w"))
    paths.root.mkdir()
    study = optuna.create_study(study_name="w", storage=paths.optuna_url, direction="maximize")
    for number, (lr, seed, value) in enumerate(
        [(0.05, 0, 0.8), (0.05, 1, 0.7), (0.1, 0, 0.75), (0.2, 0, -1.0)]
    ):
        _synthetic_trial(study, paths, {"lr": lr, "seed": seed}, f"t{number}", value)

    md = write_report(paths, "w", space)
    text, data = md.read_text(), json.loads((paths.report / "report.json").read_text())

    sam = data["methods"]["sam"]
    assert sam["trials"] == [0, 1]  # the best trial and its repeat seed
    eces = [study.trials[n].user_attrs["test_ece"] for n in (0, 1)]
    assert sam["mean"]["ece"] == pytest.approx(sum(eces) / 2, abs=2e-3)
    assert "±" in section_table(text, "## Best trial per method")[0][3]
    assert [int(r[0]) for r in section_table(text, "## Best trial")] == [0]
    assert data["ensemble"]["trials"] == [0, 2, 1]  # the diverged trial has no evidence
    assert set(data["importance"]) == {"objective"}
    assert data["sensitivity"] == [] and not (paths.report / "sensitivity.png").exists()
    assert (paths.report / "pareto.png").read_bytes().startswith(PNG_MAGIC)

    intervals = data["trial_ece_intervals"]  # every trial with evidence, from its 60 samples
    assert sorted(intervals) == ["0", "1", "2"]
    for number, entry in intervals.items():
        assert entry["low"] <= entry["ece"] <= entry["high"] and entry["high"] > entry["low"]
        assert entry["ece"] == pytest.approx(
            study.trials[int(number)].user_attrs["test_ece"], abs=2e-3
        )
    assert len(section_table(text, "## Test ECE of each trial")) == 3
    assert data["regimes"] is None and "## Regime map" not in text


# budget (epochs) -> seed -> SGD's (test ECE, ECE after TS, fitted T); SAM's ECE differs by DELTA
REGIME_SGD = {
    1: {0: (0.06, 0.02, 0.8), 1: (0.05, 0.03, 0.7)},
    2: {0: (0.09, 0.01, 1.6), 1: (0.08, 0.02, 1.4)},
}
DELTA = {1: {0: 0.03, 1: 0.05}, 2: {0: -0.02, 1: -0.03}}


def test_regime_map_pairs_each_method_with_sgd_in_each_budget(tmp_path):
    space = check_space(
        {
            "fixed": SPACE["fixed"],
            "points": [{"method": m, "epochs": e} for e in (1, 2) for m in ("sgd", "sam")],
            "repeats": 2,
        },
        "test",
    )
    paths = StudyPaths(tmp_path / "r", str(tmp_path / "r"))
    paths.root.mkdir()
    study = optuna.create_study(
        study_name="r", storage=paths.optuna_url, directions=["maximize", "minimize"]
    )
    for epochs, seeds in REGIME_SGD.items():
        for method in ("sgd", "sam"):
            for seed, (ece, ece_ts, temperature) in seeds.items():
                shift = DELTA[epochs][seed] if method == "sam" else 0.0
                attrs = {
                    "status": "completed",
                    "settings": {"method": method, "epochs": epochs, "seed": seed},
                    "tune_trial_id": f"{method}{epochs}{seed}",
                    "test_ece": ece + shift,
                    "test_ece_ts": ece_ts + shift / 2,
                    "temperature": temperature,
                    "test_overconfidence": temperature - 1,
                }
                study.add_trial(
                    optuna.trial.create_trial(values=[0.9, ece + shift], user_attrs=attrs)
                )
    md = write_report(paths, "r", space)
    text, data = md.read_text(), json.loads((paths.report / "report.json").read_text())
    assert "## Regime map" in text and (paths.report / "regimes.png").read_bytes().startswith(
        PNG_MAGIC
    )
    regimes = data["regimes"]
    assert [r["regime"] for r in regimes] == [{"epochs": 1}, {"epochs": 2}]  # by SGD's T
    assert [r["sgd_temperature"] for r in regimes] == pytest.approx([0.75, 1.5])
    for regime in regimes:
        epochs = regime["regime"]["epochs"]
        (label,) = regime["differences"]
        assert label == "SAM (ρ=0.1)"
        found = regime["differences"][label]["test_ece"]
        deltas = list(DELTA[epochs].values())
        low, high = scipy.stats.ttest_1samp(deltas, 0.0).confidence_interval(0.95)
        assert found["n"] == 2 and found["mean"] == pytest.approx(sum(deltas) / 2)
        assert (found["low"], found["high"]) == (pytest.approx(low), pytest.approx(high))
    rows = section_table(text, "## Regime map")
    assert [r[0] for r in rows] == ["epochs=1", "epochs=2"]


WIDE_SPACE = {
    "fixed": {**SPACE["fixed"], "method": "sam"},
    "search": {"lr": {"loguniform": [0.02, 0.2]}, "seed": {"categorical": [0, 1]}},
    "objective": {"type": "weighted"},
    "samples": 2,
}


def _seeds_study(tmp_path, logits_of) -> tuple[optuna.Study, StudyPaths]:
    """One configuration run with seeds 0 and 1 on the same test samples, each trial's logged
    test metrics computed from its logits (``logits_of(seed) -> (logits, labels)``), as a trial
    logs them."""
    paths = StudyPaths(tmp_path / "s", str(tmp_path / "s"))
    paths.root.mkdir()
    study = optuna.create_study(study_name="s", storage=paths.optuna_url, direction="maximize")
    for seed in (0, 1):
        logits, labels = logits_of(seed)
        table = evidence_table(logits, labels, study="s", epoch=1, temperature=1.5)
        write_evidence(table, evidence_uri(str(paths.root)), f"t{seed}", "test", 1)
        logged = calibration.calibration_report(logits, labels, logits.shape[1], temperature=1.5)
        study.enqueue_trial({"lr": 0.05, "seed": seed})
        trial = study.ask()
        trial.suggest_float("lr", 0.02, 0.2, log=True)
        trial.suggest_categorical("seed", [0, 1])
        trial.set_user_attr("status", "completed")
        trial.set_user_attr("tune_trial_id", f"t{seed}")
        for key in ("accuracy", "ece", "nll", "ece_ts", "brier"):
            trial.set_user_attr(f"test_{key}", logged[key])
        study.tell(trial, 0.8 - seed / 10)
    return study, paths


def _stored_test(paths: StudyPaths, tune_id: str) -> pd.DataFrame:
    """A trial's stored test rows, read with pyarrow and pandas alone."""
    table = pads.dataset(paths.evidence, partitioning="hive").to_table()
    frame = table.to_pandas()
    rows = frame[(frame.trial_id == tune_id) & (frame.split == "test")]
    return rows[rows.epoch == rows.epoch.max()].sort_values("sample_id")


def _near_ties_and_flushed_labels(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """200 samples: the first 100 with two top classes 2e-5 apart (equal once float16), the
    label the larger; the rest confident in class 0 with a label whose probability (~2e-9) is
    stored as 0 in float16."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(200, 10, generator=g)
    logits[:100] = 0.0
    logits[:100, 3] = 8.0
    logits[:100, 4] = 8.0 + 2e-5
    logits[100:, 0] = 12.0
    logits[100:, 9] = -8.0
    labels = torch.full((200,), 9)
    labels[:100] = 4
    return logits, labels


def test_report_accuracy_and_nll_are_what_the_trials_logged_not_float16_roundings(tmp_path):
    study, paths = _seeds_study(tmp_path, _near_ties_and_flushed_labels)
    stored = _stored_test(paths, "t0")
    probs16 = np.stack(stored.probs.to_list())
    assert (probs16[:100, 3] == probs16[:100, 4]).all() and (probs16[100:, 9] == 0).all()

    write_report(paths, "s", check_space(WIDE_SPACE, "test"))
    data = json.loads((paths.report / "report.json").read_text())
    for trial, metrics in zip(study.trials, data["methods"]["sam"]["per_trial"], strict=True):
        assert metrics["accuracy"] == trial.user_attrs["test_accuracy"] == 0.5
        assert metrics["nll"] == pytest.approx(trial.user_attrs["test_nll"], rel=1e-6)
        assert metrics["ece"] == pytest.approx(trial.user_attrs["test_ece"], abs=1e-6)
        assert metrics["ece_ts"] == pytest.approx(trial.user_attrs["test_ece_ts"], abs=1e-6)
    # the ensemble of the two seeds: its label probability is the mean of their float32 ones
    true_prob = np.mean([_stored_test(paths, f"t{s}").true_prob.to_numpy() for s in (0, 1)], 0)
    (ensemble,) = data["ensembles"]
    assert ensemble["test_nll"] == pytest.approx(-np.log(true_prob.astype(np.float64)).mean())
    assert ensemble["test_accuracy"] == 0.5  # both seeds predict the label on the near-ties
    assert data["ensemble"]["ensemble"]["nll"] == pytest.approx(ensemble["test_nll"])


def _wide(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 150, (80,), generator=torch.Generator().manual_seed(5))
    return 4 * torch.randn(80, 150, generator=g), labels


def test_evidence_of_more_than_100_classes_reports_and_says_why_there_is_no_ensemble(tmp_path):
    study, paths = _seeds_study(tmp_path, _wide)
    assert _stored_test(paths, "t0").probs.isna().all()  # no vectors above 100 classes

    md = write_report(paths, "s", check_space(WIDE_SPACE, "test"))
    text, data = md.read_text(), json.loads((paths.report / "report.json").read_text())
    for trial, metrics in zip(study.trials, data["methods"]["sam"]["per_trial"], strict=True):
        assert metrics["accuracy"] == trial.user_attrs["test_accuracy"]
        assert metrics["nll"] == pytest.approx(trial.user_attrs["test_nll"], rel=1e-6)
        assert metrics["ece_ts"] == pytest.approx(trial.user_attrs["test_ece_ts"], abs=1e-6)
        assert math.isnan(metrics["brier"]) and math.isnan(metrics["classwise_ece"])
    (reason,) = data["ensembles_skipped"]
    assert (
        reason == "no ensemble of SAM (ρ=0.1): evidence keeps probabilities only up to 100 classes"
    )
    assert f"Note: {reason}." in text
    assert data["ensemble"]["refused"] == (
        "no ensemble of the top-2: evidence keeps probabilities only up to 100 classes"
    )
    assert "No ensemble of the top-2: evidence keeps probabilities" in text
    assert (paths.report / "reliability.png").read_bytes().startswith(PNG_MAGIC)
    assert sorted(data["trial_ece_intervals"]) == ["0", "1"]


HOSTILE = [
    "<script>alert('description')</script>",
    "<img src=x onerror=alert(1)>",
    "[a link](javascript:alert(2))",
    "![an image](javascript:alert(3))",
    '<a href="JaVaScRiPt:alert(4)" onclick="alert(5)">click</a>',
    "<svg onload=alert(6)></svg><iframe src=javascript:alert(7)></iframe>",
    '<p style="background:url(javascript:alert(8))" onmouseover="alert(9)">hover</p>',
    "[a data link](data:text/html;base64,PHNjcmlwdD5hbGVydCgxMCk8L3NjcmlwdD4=)",
]


# what Markdown's tables, lists, quotes and emphasis produce; nothing that runs or loads
BODY_TAGS = {"h1", "h2", "h3", "p", "br", "blockquote", "code", "em", "strong", "ul", "li", "a"}
BODY_TAGS |= {"img", "table", "thead", "tbody", "tr", "th", "td"}


class _Page(html.parser.HTMLParser):
    """Every tag and attribute of an HTML page, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_no_user_text_injects_html_or_script_into_the_report(tmp_path):
    """Issue 34, item 6: the space's description (and setting values, file names in notes)
    reached report.html raw through Python-Markdown, and the MLflow UI shows that page."""
    space = check_space(
        {
            "description": " ".join(HOSTILE),
            "fixed": {
                **SPACE["fixed"],
                "method": "sam",
                "data_root": "/data/<img src=y onerror=alert(11)>",
            },
            "search": {"lr": {"loguniform": [0.02, 0.2]}, "seed": {"categorical": [0, 1]}},
            "objective": {"type": "weighted"},
            "samples": 4,
        },
        "test",
    )
    paths = StudyPaths(tmp_path / "w", str(tmp_path / "w"))
    paths.root.mkdir()
    study = optuna.create_study(study_name="w", storage=paths.optuna_url, direction="maximize")
    _synthetic_trial(study, paths, {"lr": 0.05, "seed": 0}, "t0", 0.8)
    _synthetic_trial(study, paths, {"lr": 0.1, "seed": 1}, "t1", 0.7)
    # a completed trial whose Tune id is hostile and whose evidence is missing: a note names it
    hostile_id = "t<script>alert(12)</script>"
    study.enqueue_trial({"lr": 0.2, "seed": 0})
    trial = study.ask()
    trial.suggest_float("lr", 0.02, 0.2, log=True)
    trial.suggest_categorical("seed", [0, 1])
    trial.set_user_attr("status", "completed")
    trial.set_user_attr("tune_trial_id", hostile_id)
    study.tell(trial, 0.75)

    md = write_report(paths, "w", space)
    text = md.read_text()
    page = (paths.report / "report.html").read_text()
    data = json.loads((paths.report / "report.json").read_text())
    assert any(hostile_id in note for note in data["evidence_left_out"])

    # report.md: no tag of the user's text survives for a Markdown viewer to render
    for tag in ("<script", "<img", "<a ", "<svg", "<iframe", "<p style"):
        assert tag not in text, tag
    # report.html: nothing that runs, nothing that loads from elsewhere
    parsed = _Page()
    parsed.feed(page)
    tags = [tag for tag, _ in parsed.tags]
    assert not set(tags) & {"script", "iframe", "svg", "object", "embed", "form", "base"}
    assert tags[:5] == ["html", "head", "meta", "title", "style"] and tags[5] == "body"
    assert set(tags[6:]) <= BODY_TAGS, set(tags[6:]) - BODY_TAGS
    for tag, attrs in parsed.tags:
        assert not [k for k in attrs if k.startswith("on")], (tag, attrs)
        assert "style" not in attrs or attrs["style"].startswith("text-align"), (tag, attrs)
        for key in ("href", "src"):
            value = (attrs.get(key) or "").strip().lower()
            assert not value.startswith(("javascript:", "vbscript:")), (tag, attrs)
            if key == "href":
                assert not value.startswith("data:"), (tag, attrs)
        if tag == "img" and attrs.get("src"):
            assert attrs["src"].startswith("data:image/png;base64,"), attrs
    # the figures are still embedded, and the user's text is still there, as text
    assert "pareto.png" in {a.get("data-file") for tag, a in parsed.tags if tag == "img"}
    shown = "".join(parsed.text)
    assert "<script>alert('description')</script>" in shown
    assert "/data/<img src=y onerror=alert(11)>" in shown
    assert hostile_id in shown
