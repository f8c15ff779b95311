"""Search spaces: every bundled one validates; broken copies are rejected before Ray starts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from search_spaces import BUNDLED_DIR, SpaceError, bundled_names
from search_spaces.schema import check_space, load_space, reachable_combinations
from study.search.sampler import SpaceSampler
from tests.test_cli import run_study

BUNDLED = ("default", "cifar10-resnet18", "cifar100-wrn28-10", "imagenet-resnet50")


def test_the_bundled_spaces_and_presets_are_shipped_and_valid():
    assert set(BUNDLED) <= set(bundled_names())
    for name in bundled_names():
        space = load_space(name)
        assert space.samples >= 1 and (space.search or space.points)


PAPER_RHO = {
    "paper-cifar10-resnet18": 0.05,
    "paper-cifar10-wrn28-10": 0.05,
    "paper-cifar100-resnet18": 0.2,
    "paper-imagenet-resnet50": 0.05,
    "paper-imagenet-vit-s16": 0.2,
    "paper-fashion-mnist": 0.05,
    "paper-fashion-mnist-short": 0.05,
}


@pytest.mark.parametrize("name", sorted(PAPER_RHO))
def test_paper_presets_follow_the_papers_protocol(name):
    space = load_space(name)
    every = [space.train_config(point) for point in space.points]
    configs = [c for c in every if c.ood is None or c.ood.heldout is None]  # all 10 classes
    assert {c.rho for c in configs if c.method != "bsam"} == {PAPER_RHO[name]}
    assert sorted(c.gamma for c in configs if c.method == "csam") == [0.5, 1.0, 2.0]
    rows = {(c.method, c.loss) for c in configs}
    assert {("sgd", "ce"), ("sgd", "ls"), ("sgd", "focal"), ("sam", "ce"), ("csam", "ce")} <= rows
    assert space.repeats == (5 if name == "paper-fashion-mnist" else 3)
    if name != "paper-fashion-mnist-short":  # the paper's other baselines
        assert {c.data_seed for c in configs} == {0}  # the seeds' deep ensemble needs shared splits
        assert ("sgd", "adafocal") in rows
        assert any(c.dropout > 0 and c.mc_samples > 1 for c in configs)
        bsams = [c for c in configs if c.method == "bsam"]
        if space.resources.workers == 1:  # bSAM runs on one worker (see the schema)
            (bsam,) = bsams
            settings = (bsam.lr, bsam.rho, bsam.bsam_prior_precision, bsam.bsam_data_factor)
            # the authors' CIFAR settings; without augmentation N is the train size and rho SAM's
            cifar = (0.5, 0.01, 10, 4) if bsam.augment else (0.5, PAPER_RHO[name], 10, 1)
            assert settings == cifar
        else:
            assert not bsams
    if (
        name.startswith(("paper-cifar", "paper-fashion-mnist"))
        and name != "paper-fashion-mnist-short"
    ):
        assert_mimo_and_rank1_rows(configs, authors=name.startswith("paper-cifar"))
    assert space.samples == len(space.points)
    for c in configs:
        assert c.schedule == "cosine" and (c.optimizer, c.momentum) in {
            ("sgd", 0.9),
            ("adamw", c.momentum),
        }
        if c.dataset.startswith("cifar"):
            assert c.val_fraction == 0.1  # the 45k/5k split


def assert_mimo_and_rank1_rows(configs: list, authors: bool) -> None:
    """One MIMO and one Rank-1 row (issue 26); ``authors``: with the authors' CIFAR settings."""
    (mimo,) = [c for c in configs if c.mimo is not None]
    (rank1,) = [c for c in configs if c.rank1 is not None]
    assert mimo.method == rank1.method == "sgd" and mimo.loss == rank1.loss == "ce"
    if authors:
        assert (mimo.mimo, mimo.mimo_batch_repetitions, mimo.mimo_input_repetition) == (3, 4, 0.0)
        settings = (
            rank1.rank1,
            rank1.rank1_family,
            rank1.rank1_prior_mean,
            rank1.rank1_prior_stddev,
            rank1.rank1_dropout_rate,
            rank1.rank1_random_sign_init,
            rank1.rank1_eval_samples,
        )
        assert settings == (4, "normal", 1.0, 0.1, 1e-3, 0.5, 1)
        assert rank1.rank1_kl_annealing_epochs == 0.8 * rank1.epochs  # their 200 of 250


def test_paper_digits_runs_every_baseline_row():
    space = load_space("paper-digits")
    configs = [space.train_config(point) for point in space.points]
    assert any(c.mimo for c in configs) and any(c.rank1 for c in configs)
    assert any(c.method == "bsam" for c in configs) and any(c.mc_samples > 1 for c in configs)


def test_paper_fashion_mnist_evaluates_shift_and_both_ood_protocols():
    """Issue 24, item 5: Fashion-MNIST-C and far-OOD digits on every 10-class row; SGD, SAM and
    CSAM also trained without two classes (near-OOD), evaluated on digits too."""
    space = load_space("paper-fashion-mnist")
    configs = [space.train_config(point) for point in space.points]
    full = [c for c in configs if c.ood.heldout is None]
    heldout = [c for c in configs if c.ood.heldout is not None]
    assert all(c.ood.fashion_mnist_c and c.ood.digits for c in full)
    assert sorted(c.method for c in heldout) == ["csam", "sam", "sgd"]
    assert {tuple(c.ood.heldout.classes) for c in heldout} == {(6, 9)}
    assert all(c.ood.digits and c.ood.fashion_mnist_c is None for c in heldout)


def test_fashion_mnist_presets_train_in_the_regime_they_claim():
    assert load_space("paper-fashion-mnist").train_config().model == "cnn_fc"  # overconfident
    assert load_space("default").train_config().model == "cnn_fc"
    short = load_space("paper-fashion-mnist-short")
    assert short.train_config().model == "cnn" and "underconfident" in short.description


def test_regime_map_trains_sgd_sam_and_csam_in_every_budget_with_three_seeds():
    from study.analysis.regimes import METHOD_KEYS

    space = load_space("regime-map-fashion-mnist")
    budgets: dict[tuple, set[str]] = {}
    for point in space.points:
        budget = tuple(sorted((k, v) for k, v in point.items() if k not in METHOD_KEYS))
        budgets.setdefault(budget, set()).add(space.train_config(point).method)
    assert len(budgets) >= 5 and all(m == {"sgd", "sam", "csam"} for m in budgets.values())
    epochs = {space.train_config(dict(b)).epochs for b in budgets}
    assert min(epochs) == 1 and max(epochs) == 25
    assert space.repeats == 3


@pytest.mark.slow  # a `study` subprocess
def test_study_spaces_lists_each_space_on_one_line():
    proc = run_study("spaces")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert sorted(line.split()[0] for line in lines) == bundled_names()


def _default() -> dict:
    return yaml.safe_load((BUNDLED_DIR / "default.yaml").read_text())


def _broken(mutate) -> dict:
    data = copy.deepcopy(_default())
    mutate(data)
    return data


BROKEN = {
    "wrong type": (lambda d: d.update(samples="many"), "samples"),
    "unknown key": (lambda d: d.update(colour="blue"), "colour"),
    "unknown fixed key": (lambda d: d["fixed"].update(colour="blue"), "fixed.colour"),
    "low > high": (lambda d: d["search"].update(lr={"loguniform": [0.2, 0.01]}), "search.lr"),
    "negative rho": (lambda d: d["search"].update(rho={"uniform": [-0.1, 0.2]}), "search.rho"),
    "unknown model": (lambda d: d["fixed"].update(model="resnet9000"), "resnet9000"),
    "unknown method": (
        lambda d: d["search"].update(method={"categorical": ["sgd", "lion"]}),
        "search.method",
    ),
    "gamma above 2": (lambda d: d["search"].update(gamma={"uniform": [0, 3]}), "search.gamma"),
    "asha rungs past the epochs": (
        lambda d: d.update(scheduler="asha", asha={"max_t": 500}),
        "max_t (500) > epochs",
    ),
    "asha grace at max_t": (
        lambda d: d.update(scheduler="asha", asha={"grace_period": 20}),
        "grace_period (20) must be below max_t (20)",
    ),
    "asha eta of 1": (lambda d: d.update(scheduler="asha", asha={"reduction_factor": 1}), "asha"),
    "asha unknown ranking": (lambda d: d.update(scheduler="asha", asha={"ranking": "x"}), "asha"),
    "condition on unknown": (
        lambda d: d["search"]["rho"].update(when={"optimiser": ["sgd"]}),
        "search.rho",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_copies_are_rejected_with_file_key_and_reason(case):
    mutate, expected = BROKEN[case]
    with pytest.raises(SpaceError) as err:
        check_space(_broken(mutate), "broken.yaml")
    message = str(err.value)
    assert message.startswith("broken.yaml: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.slow  # a `study` subprocess
@pytest.mark.parametrize("case", ["wrong type", "negative rho", "unknown model"])
def test_cli_rejects_broken_files_with_exit_2_before_ray_starts(tmp_path, case):
    mutate, expected = BROKEN[case]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(_broken(mutate), sort_keys=False))
    for args in (["spaces", "validate", str(path)], ["run", str(path), "--storage", "st"]):
        proc = run_study(*args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert str(path) in line and expected in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.yaml"]  # no study directory


def test_sampler_honours_conditions(tmp_path):
    import optuna

    space = load_space("default")
    study = optuna.create_study(directions=["maximize", "minimize"])
    for _ in range(30):
        trial = study.ask()
        fixed = SpaceSampler(space)(trial)
        assert fixed == space.fixed
        params = trial.params
        assert ("rho" in params) == (params["method"] in ("sam", "asam", "csam"))
        assert ("gamma" in params) == (params["method"] == "csam")
        space.train_config(params)  # every draw is a valid config
        study.tell(trial, [0.5, 0.1])


def test_set_overrides_move_a_searched_key_to_fixed():
    space = load_space("default", {"method": "sam", "samples": 3})
    assert space.samples == 3
    assert space.fixed["method"] == "sam" and "method" not in space.search


@pytest.mark.slow  # a `study` subprocess
def test_validate_accepts_a_users_file(tmp_path: Path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(_default(), sort_keys=False))
    proc = run_study("spaces", "validate", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout


def test_a_combination_no_trial_could_run_is_refused_before_any_trial():
    data = {
        "fixed": {"dataset": "digits"},
        "search": {
            "method": {"categorical": ["sam", "csam"]},
            "loss": {"categorical": ["ce", "focal"]},
        },
    }
    with pytest.raises(SpaceError) as err:
        check_space(copy.deepcopy(data), "mine.yaml")
    (line,) = str(err.value).splitlines()
    assert line.startswith("mine.yaml: 'search': the combination method='csam', loss='focal'")
    assert "restrict it with 'when'" in line
    data["search"]["loss"]["when"] = {"method": ["sam"]}
    check_space(data, "mine.yaml")  # CSAM keeps its own loss: every reachable trial is valid


def test_reachable_combinations_follow_when_and_put_numbers_at_both_bounds():
    space = load_space("default")
    combos = reachable_combinations(space)
    methods = {c["method"] for c in combos}
    assert methods == {"sgd", "sam", "csam"}
    for combo in combos:
        assert ("rho" in combo) == (combo["method"] != "sgd")
        assert ("gamma" in combo) == (combo["method"] == "csam")
        for name in ("lr", "rho", "gamma"):
            if name in combo:
                assert combo[name] in space.search[name].bounds
    csam = [c for c in combos if c["method"] == "csam"]
    assert {(c["lr"], c["rho"], c["gamma"]) for c in csam} >= {(0.03, 0.02, 0.0), (0.15, 0.3, 2.0)}
    for combo in combos:
        space.train_config(combo)  # what the schema promises


def test_bsam_on_several_workers_is_refused_in_one_line():
    data = {
        "fixed": {"dataset": "digits", "train_subset": None},
        "search": {"method": {"categorical": ["sam", "bsam"]}},
        "resources": {"workers": 2, "cpu": 1},
    }
    with pytest.raises(SpaceError) as err:
        check_space(data, "s.yaml")
    assert len(str(err.value).splitlines()) == 1 and "bsam" in str(err.value)
    check_space({**data, "resources": {"workers": 1, "cpu": 1}}, "s.yaml")


def test_an_int_distribution_validates_and_bad_bounds_are_one_line():
    """README promise (issue 17, item 1): ``{int: [low, high]}`` searches integers."""
    base = {"fixed": {"dataset": "digits", "train_subset": None}}
    space = check_space({**base, "search": {"epochs": {"int": [1, 2]}}}, "s.yaml")
    assert space.search["epochs"].int == (1, 2)
    with pytest.raises(SpaceError) as err:
        check_space({**base, "search": {"epochs": {"int": [None, None]}}}, "s.yaml")
    assert str(err.value).count("\n") == 0 and "search.epochs.int" in str(err.value)


def test_set_ood_null_skips_a_presets_top_level_ood_section():
    """README promise (issue 17, item 2): ``--set ood=null`` skips the OOD evaluation."""
    assert load_space("paper-cifar10-resnet18").train_config().ood is not None
    assert load_space("paper-cifar10-resnet18", {"ood": None}).train_config().ood is None


def test_spaces_validate_checks_the_ood_files_as_run_does(tmp_path, capsys):
    """Issue 17, item 6: a space whose OOD files are missing is not called valid."""
    from study.cli.main import main

    path = tmp_path / "ood.yaml"
    nowhere = tmp_path / "nowhere"
    path.write_text(
        yaml.safe_dump(
            {
                "fixed": {"dataset": "cifar10", "data_root": str(tmp_path)},
                "ood": {"svhn": {"root": str(nowhere)}},
            }
        )
    )
    assert main(["spaces", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(nowhere) in err


def test_a_yaml_syntax_error_keeps_pyyamls_line_and_column(tmp_path, capsys):
    """Issue 22, item 9: ``FILE:LINE:COL: problem``, as PyYAML marks it (1-based)."""
    from study.cli.main import main

    path = tmp_path / "broken.yaml"
    path.write_text("fixed:\n  epochs: 1\n  lr: 0.1: 2\n")
    assert main(["spaces", "validate", str(path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{path}:3:10: cannot read YAML: mapping values are not allowed here" in line


def test_a_bad_set_is_blamed_on_the_set_not_the_space_file(capsys):
    """Issue 22, item 9: the bundled file is fine; ``--set rho=-1`` is what is wrong."""
    from study.cli.main import main

    assert main(["run", "default", "--dry-run", "--set", "rho=-1"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("study run: error: --set rho=-1: "), line
    assert "'rho'" in line and "greater than 0" in line
    with pytest.raises(SpaceError, match="^--set gamma=5: "):
        load_space("default", {"gamma": 5})
    with pytest.raises(SpaceError, match="^--set method='adam': "):
        load_space("default", {"method": "adam"})


def test_a_set_of_a_searched_key_says_it_leaves_the_search(capsys, tmp_path):
    """Issue 22, item 9: ``--set lr=0.1`` fixes lr, which the space searched: say so."""
    from study.cli.main import main

    argv = ["run", "default", "--dry-run", "--storage", str(tmp_path / "st")]
    assert main([*argv, "--set", "lr=0.1", "--set", "epochs=2"]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert notes == ["note: --set lr fixes lr=0.1: it is no longer searched"]
    assert main(argv) == 0 and "note:" not in capsys.readouterr().out


def test_the_saved_space_has_no_null_keys_and_says_what_was_overridden(tmp_path):
    """Issue 22, item 9: the resolved space.yaml: no schema ``null`` keys (a setting's null
    stays), and a description that --set made false is marked."""
    from study.storage.files import prepare_study
    from trainables.layout import study_paths

    space = load_space("default", {"epochs": 1, "train_subset": None, "samples": 2})
    paths = study_paths("st", str(tmp_path))
    prepare_study(space, "st", paths)
    saved = yaml.safe_load(paths.space.read_text())

    def nulls(node: object, where: str) -> list[str]:
        if isinstance(node, dict):
            return [n for k, v in node.items() for n in nulls(v, f"{where}.{k}")]
        if isinstance(node, list):
            return [n for i, v in enumerate(node) for n in nulls(v, f"{where}.{i}")]
        return [where] if node is None else []

    assert nulls(saved, "") == [".fixed.train_subset"]
    original = yaml.safe_load((BUNDLED_DIR / "default.yaml").read_text())["description"]
    assert saved["description"] == (
        f"{original} (overridden: epochs=1, train_subset=null, samples=2)"
    )
    assert load_space("default").description == original  # no override, nothing added
    assert check_space(saved, "saved") == space.model_copy(update={"name": "st"})  # read back


def test_validate_reports_the_schema_and_missing_data_on_separate_lines(capsys, monkeypatch):
    """Issue 22, item 9: a bundled preset whose data are absent is not a schema error."""
    from study.cli.main import main

    monkeypatch.setenv("HOME", "/nonexistent-home")
    assert main(["spaces", "validate", "paper-imagenet-resnet50"]) == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "paper-imagenet-resnet50: schema: ok (0 searched settings, 11 points, "
        "11 configurations x 3 seeds)"
    ]
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("paper-imagenet-resnet50: data: missing: ") and "not found" in line
    assert "error" not in captured.out
    assert main(["spaces", "validate", "paper-digits"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "paper-digits: schema: ok (0 searched settings, 18 points, 18 configurations)",
        "paper-digits: data: found (devices and every dataset it reads)",
    ]


@pytest.mark.parametrize(
    ("study", "expected"),
    [
        ({"samples": 1}, "1 configuration = 1 trial, 2 at a time"),
        ({"samples": 1, "repeats": 2}, "1 configuration x 2 seeds = 2 trials, 2 at a time"),
        ({"samples": 3}, "3 configurations = 3 trials, 2 at a time"),
    ],
)
def test_counts_are_singular_or_plural_as_english_has_them(tmp_path, capsys, study, expected):
    """Issue 22, item 9: "1 configurations"."""
    from study.cli.main import main

    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump({"fixed": {"dataset": "digits"}, **study}))
    assert main(["run", str(path), "--dry-run", "--storage", str(tmp_path / "st")]) == 0
    assert capsys.readouterr().out.startswith(f"study one: {expected}, would be written to ")
    assert main(["spaces", "validate", str(path)]) == 0
    schema = capsys.readouterr().out.splitlines()[0]
    assert "(0 searched settings, 0 points, " in schema and " 1 configurations" not in schema


def test_presets_of_fixed_rows_run_every_row_to_its_end_and_say_so():
    """Issue 23, item 5: a comparison of fixed points is not early-stopped."""
    fixed_rows = [n for n in bundled_names() if load_space(n).points and not load_space(n).search]
    assert fixed_rows
    for name in fixed_rows:
        space = load_space(name)
        assert space.scheduler == "none", name
        assert "every row runs to its last epoch" in space.description, name
