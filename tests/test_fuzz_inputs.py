"""A property-based fuzz of the input surface of `study run` (hypothesis): generated space
documents, ``--set`` values and study names go through the same checks `study run` makes before
it writes anything (``--dry-run``: no Ray, nothing written). Each case must be accepted, or
refused with exit code 2 and one line; never a traceback, never a file written anywhere."""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import ray
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search_spaces.schema import Space
from study.cli.main import main
from trainables.config import TrainConfig

BASE = {"dataset": "digits", "train_subset": None, "model": "cnn", "device": "cpu", "epochs": 1}
KEYS = [*TrainConfig.model_fields, "bogus", "", "name", "ood"]
WORDS = ["cpu", "cuda", "xpu", "auto", "sgd", "sam", "csam", "asam", "ce", "focal", "digits",
         "cifar10", "imagefolder", "../x", "/etc", "a\x00b", "é", "*alias", "1e15", ".inf", "~"]  # fmt: skip
EXAMPLES = 260  # per input surface; two surfaces: 520 cases
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(WORDS),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
settings_dicts = st.dictionaries(st.sampled_from(KEYS), values, max_size=4)
distributions = st.fixed_dictionaries(
    {},
    optional={
        kind: st.one_of(st.lists(scalars, max_size=3), scalars)
        for kind in ("loguniform", "uniform", "int", "categorical", "step", "when")
    },
)
spaces = st.fixed_dictionaries(
    {"fixed": settings_dicts},
    optional={
        "name": scalars,
        "search": st.dictionaries(st.sampled_from(KEYS), distributions, max_size=3),
        "points": st.lists(settings_dicts, max_size=3),
        **{key: values for key in Space.model_fields if key not in ("name", "fixed", "search")},
        "bogus": values,
    },
)
VALID_SETS = ["lr=0.1", "epochs=2", "method=sgd", "method=csam", "gamma=0.5", "rho=0.2",
              "loss=focal", "seed=3", "batch_size=32", "samples=3", "concurrency=1", "repeats=2"]  # fmt: skip
set_items = st.one_of(
    st.sampled_from(VALID_SETS),
    st.tuples(
        st.one_of(st.sampled_from(KEYS), st.text(max_size=8)),
        st.one_of(st.sampled_from(WORDS), st.text(max_size=20), st.integers().map(str)),
    ).map(lambda kv: f"{kv[0]}={kv[1]}"),
)
names = st.one_of(
    st.sampled_from(["ok", "run-2.b_c", "..", ".", "../up", "/abs", "a?b", "a b"]), st.text()
)


def dump(doc: dict[str, Any]) -> str:
    """YAML of a generated document (floats as YAML floats, non-finite ones included)."""
    doc = {**doc, "fixed": {**BASE, **doc["fixed"]}}
    return yaml.safe_dump(doc, allow_unicode=True)


def check_one(capsys, space_text: str | bytes, extra: list[str]) -> str:
    """`study run SPACE --dry-run EXTRA` in a fresh sandbox: exit 0 or 2 (one line), no file.
    Returns the outcome, ``accepted`` or ``refused``."""
    with tempfile.TemporaryDirectory() as outer:
        sandbox = Path(outer) / "sandbox"
        sandbox.mkdir()
        path = sandbox / "space.yaml"
        path.write_bytes(space_text if isinstance(space_text, bytes) else space_text.encode())
        with contextlib.chdir(sandbox):
            rc = main(["run", str(path), "--dry-run", "--storage", "studies", *extra])
        out, err = capsys.readouterr()
        assert rc in (0, 2), (rc, out, err)
        if rc == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and len(lines[0]) < 600, err[:2000]
        else:
            assert "dry run" in out and not err.strip(), (out, err)
        assert [p.name for p in Path(outer).rglob("*")] == ["sandbox", "space.yaml"]
    assert not ray.is_initialized()
    return "refused" if rc == 2 else "accepted"


def fuzz_space_files(capsys, cases: Counter[str]) -> None:
    """Generated space documents (or raw bytes) as the space file of `study run --dry-run`."""

    @FUZZ
    @given(doc=spaces, raw=st.one_of(st.none(), st.binary(max_size=64)))
    def case(doc: dict[str, Any], raw: bytes | None) -> None:
        cases[check_one(capsys, raw if raw is not None else dump(doc), [])] += 1

    case()


def fuzz_sets_and_names(capsys, cases: Counter[str]) -> None:
    """Generated ``--set`` items and ``--name`` values over a valid space."""

    @FUZZ
    @given(sets=st.lists(set_items, max_size=3), name=st.one_of(st.none(), names))
    def case(sets: list[str], name: str | None) -> None:
        extra = [f"--name={name}"] if name is not None else []
        for item in sets:
            extra += ["--set", item]
        space = dump({"fixed": {}, "search": {"lr": {"loguniform": [0.01, 0.1]}}})
        cases[check_one(capsys, space, extra)] += 1

    case()


def test_generated_inputs_are_accepted_or_refused_in_one_line_over_520_cases(capsys):
    """Every generated case is accepted or refused in one line; the test counts its own cases
    (no state shared with other tests), both surfaces, both outcomes."""
    spaces_cases: Counter[str] = Counter()
    fuzz_space_files(capsys, spaces_cases)
    sets_cases: Counter[str] = Counter()
    fuzz_sets_and_names(capsys, sets_cases)
    assert sum(spaces_cases.values()) == sum(sets_cases.values()) == EXAMPLES
    for cases in (spaces_cases, sets_cases):
        assert cases["accepted"] > 0 and cases["refused"] > 0, cases


def test_a_key_with_a_line_break_character_is_shown_escaped_on_one_line():
    # found by the generated cases above: U+0085 is a line break to str.splitlines
    from search_spaces.schema import check_space
    from trainables.errors import InputError

    try:
        check_space({"fixed": {}, "objective": {" \x85": None}}, "space.yaml")
    except InputError as err:
        (line,) = str(err).splitlines()
        assert "objective. \\x85" in line and "unknown key" in line
    else:
        raise AssertionError("an unknown key was accepted")
