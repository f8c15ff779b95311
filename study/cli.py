"""The ``study`` command: ``train`` (one run, no Ray), ``run``, ``resume`` and ``rerun`` (Ray Tune
studies searched by Optuna), ``report`` and ``compare`` (their results), ``spaces`` (bundled search
spaces)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from search_spaces import SpaceError, bundled_names, read_space_yaml, resolve_space
from study.api import USER_ERRORS, Study, StudyInputError, check_inputs, resolve, user_errors
from study.settings import parse_sets
from trainables.config import parse_config
from trainables.loop import EpochRecord, Trainer


def _add_sets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="sets", action="append", metavar="KEY=VALUE", help="override a setting"
    )


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``study run: error: ...; see study run --help``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="study", description="Hyperparameter studies of sharpness-aware training."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="one training run without Ray, printing a per-epoch table")
    train.add_argument("--space", help="take fixed settings from a bundled space name or YAML file")
    train.add_argument(
        "--experiment", default="study-train", help="MLflow experiment of the run (study-train)"
    )
    _add_tracking(train)
    _add_sets(train)
    train.set_defaults(handler=cmd_train)

    run = sub.add_parser("run", help="run a study: Optuna searches a space over Ray Tune trials")
    run.add_argument("space", nargs="?", default="default", help="bundled space name or YAML file")
    run.add_argument("--name", help="study name (default: the space's name)")
    run.add_argument("--samples", type=int, help="number of configurations (overrides the space)")
    run.add_argument("--repeats", type=int, help="seeds per configuration (overrides the space)")
    run.add_argument("--concurrency", type=int, help="trials at once (overrides the space)")
    _add_storage_and_address(run)
    _add_tracking(run)
    _add_sets(run)
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything (space, name, storage, devices, data) and say what would run; "
        "write nothing, start nothing",
    )
    run.add_argument(
        "--register",
        metavar="MODEL",
        help="after the study, register its best trial's model as MODEL in MLflow's registry",
    )
    run.set_defaults(handler=cmd_run)

    register = sub.add_parser(
        "register", help="register a trial's model in MLflow's Model Registry"
    )
    register.add_argument("name", help="the study's name")
    register.add_argument("model", help="the registered model's name")
    register.add_argument(
        "--trial", type=int, help="the Optuna trial number (default: the best trial)"
    )
    register.add_argument("--storage", help="directory holding studies (default: ./studies)")
    register.set_defaults(handler=cmd_register)

    rerun = sub.add_parser(
        "rerun", help="a new study re-running a finished study's best configurations with seeds"
    )
    rerun.add_argument("name", help="the finished study's name")
    rerun.add_argument("--top", type=int, default=3, help="how many configurations (3)")
    rerun.add_argument("--seeds", type=int, default=3, help="seeds per configuration (3)")
    rerun.add_argument("--new-name", help="the new study's name (default: NAME-rerun)")
    rerun.add_argument("--concurrency", type=int, help="trials at once (default: as NAME)")
    _add_storage_and_address(rerun)
    _add_tracking(rerun)
    rerun.set_defaults(handler=cmd_rerun)

    compare = sub.add_parser(
        "compare", help="the paper-style table: per configuration, mean ± std over seeds"
    )
    compare.add_argument("name", help="the study's name")
    compare.add_argument("--format", choices=["markdown", "latex", "csv"], default="markdown")
    compare.add_argument(
        "--baseline",
        metavar="ROW",
        help="add each configuration's difference to this row (its label or row number), "
        "paired by seed, with 95%% intervals",
    )
    compare.add_argument(
        "--ensembles",
        action="store_true",
        help="add a row per configuration run with several seeds: the deep ensemble of its "
        "seeds, from the stored probabilities",
    )
    compare.add_argument("--storage", help="directory holding studies (default: ./studies)")
    compare.set_defaults(handler=cmd_compare)

    resume = sub.add_parser("resume", help="continue an interrupted study")
    resume.add_argument("name", help="the study's name")
    _add_storage_and_address(resume)
    resume.set_defaults(handler=cmd_resume)

    report = sub.add_parser("report", help="write <study>/report/: front, tables, figures")
    report.add_argument("name", help="the study's name")
    report.add_argument("--storage", help="directory holding studies (default: ./studies)")
    report.set_defaults(handler=cmd_report)

    status = sub.add_parser(
        "status", help="where a running or finished study stands (from its storage; no Ray)"
    )
    status.add_argument("name", help="the study's name")
    status.add_argument("--storage", help="directory holding studies (default: ./studies)")
    status.set_defaults(handler=cmd_status)

    spaces = sub.add_parser("spaces", help="list bundled search spaces, or validate a file")
    spaces.add_argument("action", nargs="?", choices=["list", "validate"], default="list")
    spaces.add_argument("file", nargs="?", help="with validate: the YAML file to check")
    spaces.set_defaults(handler=cmd_spaces)
    return parser


def _add_storage_and_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", help="directory (or URI) holding studies (default: ./studies)")
    parser.add_argument(
        "--address", help="Ray cluster to join, e.g. 'auto' (default: a private local Ray)"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print Ray's and Tune's own output too (default: it goes to <study>/driver.log)",
    )


def _add_tracking(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI, e.g. http://HOST:5000 (default: sqlite:///<cwd>/mlflow.db)",
    )


def train_settings(space: str | None, sets: list[str] | None) -> dict[str, Any]:
    """The settings of ``study train``: a space's fixed section, then ``--set`` overrides."""
    settings: dict[str, Any] = {}
    if space:
        fixed = read_space_yaml(resolve_space(space)).get("fixed") or {}
        if not isinstance(fixed, dict):
            raise SpaceError(f"{space}: 'fixed' must be a mapping of settings")
        settings.update(fixed)
    settings.update(parse_sets(sets))
    return settings


def epoch_bar(trainer: Trainer) -> Any:
    """A tqdm bar over one epoch's batches, on a terminal only (None elsewhere)."""
    if not sys.stdout.isatty():
        return None
    from tqdm import tqdm

    size, batch = trainer.data.split_size("train"), trainer.cfg.batch_size
    return tqdm(total=-(-size // batch), unit="batch", leave=False, file=sys.stdout)


def _epoch_line(_: Trainer, record: EpochRecord) -> str:
    val = record.val
    return (
        f"{record.epoch:>5}  {record.train_loss:>10.4f}  {val.get('accuracy', float('nan')):>7.4f}"
        f"  {val.get('ece', float('nan')):>7.4f}  {val.get('nll', float('nan')):>7.4f}"
        f"  {record.seconds:>6.1f}s"
    )


def cmd_train(args: argparse.Namespace) -> int:
    """Run one training from the defaults, a space's fixed settings and ``--set`` overrides."""
    from study.inputs import InputError, check_no_credentials
    from study.tracking import TrackingError, TrainRunLogger, default_tracking_uri
    from trainables.plots import reliability_png

    try:
        check_no_credentials(args.tracking_uri, "--tracking-uri")
        cfg = parse_config(train_settings(args.space, args.sets), where="study train")
        trainer = Trainer(cfg)
        tracker = TrainRunLogger(
            args.tracking_uri or default_tracking_uri(), args.experiment, cfg.model_dump()
        )
    except (*USER_ERRORS, InputError, TrackingError) as err:
        raise StudyInputError(str(err)) from None
    print(
        f"study train: {cfg.method} on {cfg.dataset} ({trainer.data.split_size('train')} train, "
        f"{trainer.data.split_size('val')} val, {trainer.data.split_size('test')} test), "
        f"model {cfg.model}, {cfg.epochs} epochs, device {trainer.device}"
    )
    print(
        f"{'epoch':>5}  {'train_loss':>10}  {'val_acc':>7}  {'val_ece':>7}  {'val_nll':>7}  {'time':>7}"
    )

    bar = epoch_bar(trainer)

    def on_epoch(trainer: Trainer, record: EpochRecord) -> None:
        if bar is not None:
            bar.reset()
        if bar is not None:
            bar.write(_epoch_line(trainer, record), file=sys.stdout)
        else:
            print(_epoch_line(trainer, record), flush=True)
        tracker.epoch({**record.flat(), **record.final}, record.epoch)

    try:
        result = trainer.fit(on_epoch=on_epoch, on_batch=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    if result.status == "diverged":
        tracker.finish("diverged", {})
        print(f"diverged: the training loss became non-finite in epoch {trainer.epochs_done}")
        return 0
    f = result.final
    logits, labels = trainer.predictions("test")
    tracker.finish(
        "completed", {"reliability.png": reliability_png(logits, labels, f["temperature"])}
    )
    print(
        f"test: accuracy {f['test_accuracy']:.4f}  ece {f['test_ece']:.4f}  "
        f"adaece {f['test_adaece']:.4f}  smece {f['test_smece']:.4f}  "
        f"overconfidence {f['test_overconfidence']:+.4f}  nll {f['test_nll']:.4f}  "
        f"brier {f['test_brier']:.4f}  ece_ts {f['test_ece_ts']:.4f} (T={f['temperature']:.3f})"
        f"  [{result.seconds:.0f}s]"
    )
    print(f"mlflow run {tracker.run_id} in {tracker.tracking_uri}")
    return 0


def _load(args: argparse.Namespace) -> Study:
    """The existing study ``args.name`` (in ``args.storage``)."""
    return Study.load(args.name, args.storage or "studies")


def cmd_report(args: argparse.Namespace) -> int:
    """Write (or rewrite) a study's report from its Optuna storage, results and evidence."""
    print(f"report: {_load(args).report()}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print trial counts, the driver, elapsed time, the best so far and the MLflow run."""
    from study.status import format_status

    study = _load(args)
    print(format_status(study.status(), study.space))
    return 0


def cmd_spaces(args: argparse.Namespace) -> int:
    """List the bundled spaces, or validate a user's file."""
    from search_spaces.schema import load_space

    if args.action == "validate":
        if not args.file:
            raise StudyInputError(
                "spaces validate needs a FILE: study spaces validate my_space.yaml"
            )
        from trainables.ood import check_ood_config

        with user_errors():
            space = load_space(args.file)
            check_ood_config(space.train_config())  # its files, as `study run` checks them
        repeats = f" x {space.repeats} seeds" if space.repeats > 1 else ""
        print(
            f"{args.file}: valid ({len(space.search)} searched settings, {len(space.points)} "
            f"points, {space.samples} configurations{repeats})"
        )
        return 0
    names = bundled_names()
    width = max(len(n) for n in names)
    for name in names:
        description = read_space_yaml(resolve_space(name)).get("description", "")
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Validate everything, create the study, run it, print the front."""
    with user_errors():
        overrides: dict[str, Any] = parse_sets(args.sets)
    for key in ("samples", "repeats", "concurrency"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    space = resolve(args.space, overrides)
    name = args.name or space.name or "study"
    paths = check_inputs(space, name, args.storage, args.tracking_uri, args.address)
    if args.dry_run:
        print(
            f"{_plan(space, name)}, would be written to {paths.root}; all inputs are valid "
            "(dry run: nothing written, nothing started)"
        )
        return 0
    study = Study.create(space, name, args.storage, args.tracking_uri, tags={"space": args.space})
    code = _run_and_print(study, study.run, args)
    if code == 0 and args.register:
        _print_registered(study.register(args.register))
    return code


def _print_registered(version: Any) -> None:
    print(
        f"registered: models:/{version.name}/{version.version} (trial {version.tags['trial']}, "
        f"test ECE {version.tags.get('test_ece', '?')}, T {version.tags.get('temperature', '?')})"
    )


def cmd_register(args: argparse.Namespace) -> int:
    """Register a finished trial's model in the Model Registry."""
    _print_registered(_load(args).register(args.model, args.trial))
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    """A new study running the ``--top`` best configurations of a finished one, ``--seeds`` each."""
    study = _load(args).rerun(
        args.top,
        args.seeds,
        args.new_name,
        args.concurrency,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
    )
    return _run_and_print(study, study.run, args)


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue an interrupted study from Tune's experiment state and the Optuna storage."""
    study = _load(args)
    return _run_and_print(study, study.resume, args)


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the study's comparison table(s) as Markdown, LaTeX or CSV."""
    from study.compare import comparison_tables, find_row, paired_table, render, render_paired

    study = _load(args)
    tables = comparison_tables(study.optuna(), study.space)
    if not tables[0].confs:
        print(f"study {args.name}: no completed trial to compare", file=sys.stderr)
        return 1
    shown = tables
    if args.ensembles:
        from study.ensembles import with_ensembles

        skipped: list[str] = []
        shown = with_ensembles(tables, study.paths.evidence, skipped)
        for reason in skipped:
            print(f"note: {reason}", file=sys.stderr)
    blocks = [render(table, args.format) for table in shown]
    if args.baseline is not None:
        try:
            baseline = find_row(tables[0].confs, args.baseline)
        except ValueError as err:
            raise StudyInputError(str(err)) from None
        paired = paired_table(tables[0].confs, baseline, study.space)
        if args.format != "csv":
            blocks.append(
                f"Difference to {paired.baseline.label}, paired by seed: mean [95% Student-t "
                "interval] in percentage points; bold where the interval excludes 0."
            )
        blocks.append(render_paired(paired, args.format))
    print("\n\n".join(blocks))
    return 0


def _plan(space: Any, name: str) -> str:
    repeats = f" x {space.repeats} seeds" if space.repeats > 1 else ""
    return (
        f"study {name}: {space.samples} configurations{repeats} = {space.trials} trials, "
        f"{space.concurrency} at a time"
    )


INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C


def _run_and_print(study: Study, run: Any, args: argparse.Namespace) -> int:
    """Run (or resume) ``study`` with its plan before and its front, paths and report after."""
    from study.front import format_table, front_rows

    space = getattr(args, "space", None)
    source = f" (space {space})" if space else ""
    print(f"{_plan(study.space, study.name)}{source}", flush=True)
    print(f"  files: {study.paths.root}  (Ray's and Tune's output: {study.paths.log.name})")
    info = study.tracking()
    if info:
        print(f"  mlflow: {info['tracking_uri']}, run {info['parent_run_id']}", flush=True)
    summary = run(args.address, args.verbose)
    paths = study.paths
    title = "Pareto front" if study.space.objective.type == "pareto" else "best trial"
    print(f"\n{title} of study {study.name} ({summary.trials} trials, {summary.errors} errored):")
    print(format_table(front_rows(study.optuna(), study.space)))
    print(f"\nstudy directory: {paths.root}")
    print(f"optuna storage:  {paths.optuna_url}  (optuna-dashboard {paths.optuna_url})")
    print(f"tune experiment: {paths.tune}")
    print(f"evidence:        {paths.evidence}")
    if summary.report is not None:
        print(f"report:          {summary.report}")
    if summary.interrupted_at is not None:
        print(
            f"study {study.name} interrupted: {summary.interrupted_at} of {study.space.trials} "
            f"trials finished (the report is partial); continue with 'study resume {study.name}'",
            file=sys.stderr,
        )
        return INTERRUPTED
    return 0 if summary.report is not None else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``study`` console script."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a one-line parse error (exit 2)
        return int(exit_.code or 0)
    try:
        return args.handler(args)
    except StudyInputError as err:
        print(f"study {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
