"""The ``study`` command: ``study train`` (one run, no Ray)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from search_spaces import SpaceError, read_space_yaml, resolve_space
from study.settings import parse_sets
from trainables.config import ConfigError, parse_config
from trainables.data import DataError
from trainables.loop import EpochRecord, Trainer
from trainables.models import ModelError

USER_ERRORS = (ConfigError, DataError, ModelError, SpaceError)


class UsageError(Exception):
    """Bad input detected before any work starts: printed as one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="study", description="Hyperparameter studies of sharpness-aware training."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="one training run without Ray, printing a per-epoch table")
    train.add_argument("--space", help="take fixed settings from a bundled space name or YAML file")
    train.add_argument(
        "--set", dest="sets", action="append", metavar="KEY=VALUE", help="override a setting"
    )
    train.set_defaults(handler=cmd_train)
    return parser


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


def _print_epoch(_: Trainer, record: EpochRecord) -> None:
    val = record.val
    print(
        f"{record.epoch:>5}  {record.train_loss:>10.4f}  {val.get('accuracy', float('nan')):>7.4f}"
        f"  {val.get('ece', float('nan')):>7.4f}  {val.get('nll', float('nan')):>7.4f}"
        f"  {record.seconds:>6.1f}s",
        flush=True,
    )


def cmd_train(args: argparse.Namespace) -> int:
    """Run one training from the defaults, a space's fixed settings and ``--set`` overrides."""
    try:
        cfg = parse_config(train_settings(args.space, args.sets), where="study train")
        trainer = Trainer(cfg)
    except USER_ERRORS as err:
        raise UsageError(str(err)) from None
    print(
        f"study train: {cfg.method} on {cfg.dataset} ({trainer.data.split_size('train')} train, "
        f"{trainer.data.split_size('val')} val, {trainer.data.split_size('test')} test), "
        f"model {cfg.model}, {cfg.epochs} epochs, device {trainer.device}"
    )
    print(
        f"{'epoch':>5}  {'train_loss':>10}  {'val_acc':>7}  {'val_ece':>7}  {'val_nll':>7}  {'time':>7}"
    )
    result = trainer.fit(on_epoch=_print_epoch)
    if result.status == "diverged":
        print(f"diverged: the training loss became non-finite in epoch {trainer.epochs_done}")
        return 0
    f = result.final
    print(
        f"test: accuracy {f['test_accuracy']:.4f}  ece {f['test_ece']:.4f}  "
        f"adaptive_ece {f['test_adaece']:.4f}  nll {f['test_nll']:.4f}  brier {f['test_brier']:.4f}"
        f"  ece_ts {f['test_ece_ts']:.4f} (T={f['temperature']:.3f})  [{result.seconds:.0f}s]"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``study`` console script."""
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except UsageError as err:
        print(f"study {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
