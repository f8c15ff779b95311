"""The ``study`` command: ``train`` (one run, no Ray), ``run``, ``resume`` and ``rerun`` (Ray Tune
studies searched by Optuna), ``report`` and ``compare`` (their results), ``spaces`` (bundled search
spaces)."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from search_spaces import bundled_names, read_space_yaml, resolve_space
from study.cli.settings import parse_sets
from study.output import plural
from trainables.errors import InputError, SharpcalError

if TYPE_CHECKING:  # the commands import what they run: `study --help` loads no torch
    from study.api.study import Study
    from trainables.engine.loop import EpochRecord, Trainer

_SEVERITY = re.compile(r"_s\d+_")  # a per-severity metric (cifar10_c_s3_ece): not printed


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
    register.add_argument(
        "--epoch",
        type=int,
        help="with --trial, one of its kept epochs (late_checkpoints; default: its best)",
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
    rerun.add_argument(
        "--epoch",
        choices=["last", "chosen"],
        help="rerun each configuration to its last epoch or to its chosen late checkpoint "
        "(default: chosen for a search with late_checkpoints, else last)",
    )
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
    compare.add_argument(
        "--calibrators",
        metavar="NAMES",
        help="add a table per post-hoc calibrator (ts,vs,ms,hb,iso: temperature, vector, "
        "matrix/Dirichlet scaling, histogram binning, isotonic regression), each fitted on every "
        "trial's val evidence and applied to its test and corruption evidence",
    )
    compare.add_argument(
        "--epoch",
        choices=["last", "chosen"],
        help="each trial at its last epoch or at its chosen late checkpoint (default: chosen "
        "for a search with late_checkpoints, else last)",
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
    status.add_argument(
        "--address",
        default="auto",
        help="while the study runs, list the nodes of the Ray cluster there by type (default: "
        "auto, the cluster this machine runs, e.g. from its head; 'none': skip)",
    )
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


def epoch_bar(trainer: Trainer) -> Any:
    """A tqdm bar over one epoch's batches, on a terminal only (None elsewhere)."""
    if not sys.stdout.isatty():
        return None
    from tqdm import tqdm

    size, batch = trainer.data.split_size("train"), trainer.cfg.batch_size
    return tqdm(total=-(-size // batch), unit="batch", leave=False, file=sys.stdout)


def result_line(final: dict[str, Any]) -> str:
    """``study train``'s test line: every split metric of ``study compare``'s main table that
    the trial logged, in registration order (``Metric.format``), then the fitted T."""
    from trainables.metrics.base import split_metrics

    shown = [
        f"{m.name} {m.format(final[m.test_key])}"
        for m in split_metrics()
        if m.compare == "always" and isinstance(final.get(m.test_key), (int, float))
    ]
    line = "test: " + "  ".join(shown)
    if isinstance(final.get("temperature"), (int, float)):
        line += f" (T={final['temperature']:.3f})"
    return line


def _epoch_line(record: EpochRecord) -> str:
    val = record.val
    return (
        f"{record.epoch:>5}  {record.train_loss:>10.4f}  {val.get('accuracy', float('nan')):>7.4f}"
        f"  {val.get('ece', float('nan')):>7.4f}  {val.get('nll', float('nan')):>7.4f}"
        f"  {record.seconds:>6.1f}s"
    )


class _TrainPrinter:
    """What `study train` prints while ``study.api.train.train`` runs: the header, one line per
    epoch and, on a terminal, a bar over the epoch's batches."""

    def __init__(self) -> None:
        self.bar: Any = None

    def start(self, trainer: Trainer) -> None:
        cfg, data = trainer.cfg, trainer.data
        print(
            f"study train: {cfg.method} on {cfg.dataset} ({data.split_size('train')} train, "
            f"{data.split_size('val')} val, {data.split_size('test')} test), loss {cfg.loss}, "
            f"model {cfg.model}, {plural(cfg.epochs, 'epoch')}, device {trainer.device}"
        )
        print(
            f"{'epoch':>5}  {'train_loss':>10}  {'val_acc':>7}  {'val_ece':>7}  {'val_nll':>7}  "
            f"{'time':>7}"
        )
        self.bar = epoch_bar(trainer)

    def epoch(self, _: Trainer, record: EpochRecord) -> None:
        if self.bar is not None:
            self.bar.reset()
            self.bar.write(_epoch_line(record), file=sys.stdout)
        else:
            print(_epoch_line(record), flush=True)

    def batch(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_train(args: argparse.Namespace) -> int:
    """Run one training (``study.api.train.train``) and print its epochs and test line."""
    from study.api.train import train

    overrides = parse_sets(args.sets)
    printer = _TrainPrinter()
    try:
        result = train(
            overrides,
            args.space,
            experiment=args.experiment,
            tracking_uri=args.tracking_uri,
            on_start=printer.start,
            on_epoch=printer.epoch,
            on_batch=printer.batch,
        )
    finally:
        printer.close()
    if result.status == "diverged":
        print(f"diverged: {result.reason}")
        return 0
    f = result.final
    print(f"{result_line(f)}  [{result.seconds:.0f}s]")
    from trainables.config import OOD_SPLITS

    ood = {k: v for k, v in f.items() if k.startswith(OOD_SPLITS) and not _SEVERITY.search(k)}
    if ood:
        print("ood: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(ood.items())))
    print(f"mlflow run {result.run_id} in {result.tracking_uri}")
    return 0


def _load(args: argparse.Namespace) -> Study:
    """The existing study ``args.name`` (in ``args.storage``)."""
    from study.api.study import Study

    return Study.load(args.name, args.storage or "studies")


def cmd_report(args: argparse.Namespace) -> int:
    """Write (or rewrite) a study's report from its Optuna storage, results and evidence."""
    print(f"report: {_load(args).report()}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print trial counts, the driver, elapsed time, the best so far and the MLflow run."""
    from study.api.status import format_status

    study = _load(args)
    address = None if args.address.lower() == "none" else args.address
    print(format_status(study.status(address), study.space))
    return 0


def cmd_spaces(args: argparse.Namespace) -> int:
    """List the bundled spaces, or validate a user's file."""
    if args.action == "validate":
        if not args.file:
            raise InputError("spaces validate needs a FILE: study spaces validate my_space.yaml")
        return _validate(args.file)
    names = bundled_names()
    width = max(len(n) for n in names)
    for name in names:
        description = read_space_yaml(resolve_space(name)).get("description", "")
        print(f"{name:<{width}}  {description}")
    return 0


def _validate(file: str) -> int:
    """`study spaces validate FILE`: the schema's verdict, then whether the data it reads are
    here (the checks ``Study.create`` makes), each on its own line; exit 2 on either."""
    from study.api.study import check_files, resolve

    space = resolve(file)  # a bad space: one error line
    repeats = f" x {plural(space.repeats, 'seed')}" if space.repeats > 1 else ""
    print(
        f"{file}: schema: ok ({plural(len(space.search), 'searched setting')}, "
        f"{plural(len(space.points), 'point')}, "
        f"{plural(space.samples, 'configuration')}{repeats})"
    )
    try:
        check_files(space)
    except SharpcalError as err:
        print(f"{file}: data: missing: {err}", file=sys.stderr)
        return 2
    print(f"{file}: data: found (devices and every dataset it reads)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Validate everything, create the study, run it, print the front."""
    from study.api.study import Study

    overrides: dict[str, Any] = parse_sets(args.sets)
    for key in ("samples", "repeats", "concurrency"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    plan = Study.check(
        args.space, args.name, args.storage, args.tracking_uri, overrides, args.address
    )
    if args.dry_run:
        print(
            f"{plan.describe()}, would be written to {plan.paths.root}; all inputs are valid "
            "(dry run: nothing written, nothing started)"
        )
        for note in plan.notes():
            print(f"note: {note}")
        return 0
    study = Study.create(
        plan.space,
        plan.name,
        args.storage,
        args.tracking_uri,
        tags={"space": args.space},
        address=args.address,
    )
    code = _run_and_print(study, study.run, args, plan.notes())
    if code == 0 and args.register:
        _print_registered(study.register(args.register))
    return code


def _print_registered(version: Any) -> None:
    print(
        f"registered: models:/{version.name}/{version.version} (trial {version.tags['trial']}, "
        f"epoch {version.tags.get('epoch', '?')}, "
        f"test ECE {version.tags.get('test_ece', '?')}, T {version.tags.get('temperature', '?')})"
    )


def cmd_register(args: argparse.Namespace) -> int:
    """Register a finished trial's model in the Model Registry."""
    _print_registered(_load(args).register(args.model, args.trial, args.epoch))
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
        address=args.address,
        epoch=args.epoch,
    )
    return _run_and_print(study, study.run, args)


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue an interrupted study from Tune's experiment state and the Optuna storage."""
    study = _load(args)
    return _run_and_print(study, study.resume, args)


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the study's comparison (``Study.compare``) as Markdown, LaTeX or one CSV table."""
    comparison = _load(args).compare(args.baseline, args.ensembles, args.calibrators, args.epoch)
    if not comparison.confs:
        print(f"study {args.name}: no completed trial to compare", file=sys.stderr)
        return 1
    for reason in comparison.skipped:
        print(f"note: {reason}", file=sys.stderr)
    print(comparison.render(args.format))
    return 0


INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C


def _run_and_print(
    study: Study, run: Any, args: argparse.Namespace, notes: Sequence[str] = ()
) -> int:
    """Run (or resume) ``study`` with its plan (and ``notes`` on it) before and its front,
    paths and report after."""
    from study.analysis.front import format_table, front_rows
    from study.api.study import StudyPlan

    space = getattr(args, "space", None)
    source = f" (space {space})" if space else ""
    plan = StudyPlan(study.space, study.name, study.paths, [])
    print(f"{plan.describe()}{source}", flush=True)
    for note in notes:
        print(f"  note: {note}", flush=True)
    print(f"  files: {study.paths.root}  (Ray's and Tune's output: {study.paths.log.name})")
    info = study.tracking()
    if info:
        print(f"  mlflow: {info['tracking_uri']}, run {info['parent_run_id']}", flush=True)
    try:
        summary = run(args.address, args.verbose)
    except KeyboardInterrupt:  # before its trials started (or Ctrl-C twice): nothing to print
        print(
            f"study {study.name} interrupted before its trials ran; continue with "
            f"'study resume {study.name}'",
            file=sys.stderr,
        )
        return INTERRUPTED
    paths = study.paths
    title = "Pareto front" if study.space.objective.type == "pareto" else "best trial"
    print(
        f"\n{title} of study {study.name} ({plural(summary.trials, 'trial')}, "
        f"{summary.errors} errored):"
    )
    print(format_table(front_rows(study.optuna(), study.space)))
    print(f"\nstudy directory: {paths.root}")
    print(f"optuna storage:  {paths.optuna_url}  (optuna-dashboard {paths.optuna_url})")
    print(f"tune experiment: {paths.tune}")
    print(f"evidence:        {paths.evidence}")
    if summary.report is not None:
        print(f"report:          {summary.report}")
    if summary.stopped is not None:
        print(
            f"study {study.name} stopped: {summary.stopped}; {summary.interrupted_at or 0} of "
            f"{plural(study.space.trials, 'trial')} finished; free space, then continue with "
            f"'study resume {study.name}'",
            file=sys.stderr,
        )
        return 1
    if summary.interrupted_at is not None:
        report_state = "the report is partial" if summary.report else "no report was written"
        print(
            f"study {study.name} interrupted: {summary.interrupted_at} of "
            f"{plural(study.space.trials, 'trial')} finished ({report_state}); continue "
            f"with 'study resume {study.name}'",
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
    from study.runtime.interrupts import terminate_as_interrupt

    try:
        with terminate_as_interrupt():
            return args.handler(args)
    except SharpcalError as err:
        print(f"study {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: what was half-done was cleaned up
        print(f"study {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` once what an orderly exit does for others is done: every
    non-daemon thread joined, the ``atexit`` handlers run (logging, MLflow, Ray), stdout and
    stderr flushed. Freeing the modules of torch, Ray, MLflow and pandas one by one is skipped:
    it took about 4.5 s of every study on 2 cores and is of no use to anyone."""
    import atexit
    import threading

    # the interpreter's own order: threading's exit hooks (they stop the workers of
    # concurrent.futures pools, which would otherwise wait forever), every non-daemon thread
    # joined, then the atexit handlers
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    else:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
