"""What the driver checks before it writes anything or starts Ray.

Each check raises ``InputError`` with one line (what, where, how to fix); the CLI prints it and
exits with code 2. Values a user typed are echoed cut to a readable length, and never a password.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from search_spaces.schema import Space, reachable_combinations
from study.runtime.cluster import recorded_cluster
from trainables.config import TrainConfig
from trainables.errors import InputError
from trainables.messages import MAX_SHOWN, SECRET_QUERY_PARAM, redact_credentials, shown

CREDENTIAL_HINTS = {
    "--tracking-uri": "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
    "MLFLOW_TRACKING_TOKEN)",
    "--storage": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the machine's IAM role)",
    "--address": "RAY_AUTH_TOKEN (Ray's token authentication)",
}


def check_no_credentials(uri: str | None, option: str) -> None:
    """Refuse a URI with user info (``scheme://user:password@host``): credentials in a URI end
    up in messages, files and Tune's saved state; they belong in environment variables."""
    if not uri:
        return
    if SECRET_QUERY_PARAM.search(uri):
        raise InputError(
            f"{option} {redact_credentials(uri)[:MAX_SHOWN]} holds credentials in its query: "
            f"remove them from the URI and set {CREDENTIAL_HINTS[option]} instead"
        )
    scheme, _, rest = uri.partition("://") if "://" in uri else ("", "", uri)
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    # A secret may hold '/' (AWS keys do), so any '@' before the path's end counts, unless the
    # URI has no authority at all (sqlite:////abs/path).
    if rest.startswith("/") or "@" not in rest:
        return
    host = rest.rsplit("@", 1)[1].split("/", 1)[0]
    redacted = f"{scheme}://***@{host}" if scheme else f"***@{host}"
    raise InputError(
        f"{option} {redacted} holds credentials: remove them from the URI and set "
        f"{CREDENTIAL_HINTS[option]} instead"
    )


# The tracking-store schemes MLflow's client knows (a SQLAlchemy URI may name its driver:
# ``postgresql+psycopg2://``); a plain path is a file store.
TRACKING_SCHEMES = (
    "http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks",
    "databricks-uc", "uc",
)  # fmt: skip


def check_tracking_uri(uri: str | None) -> None:
    """A ``--tracking-uri`` MLflow can open: no credentials, a known scheme (checked before
    any work: MLflow's own error is a long traceback)."""
    if uri is None:
        return
    if not isinstance(uri, str) or not uri.strip():
        raise InputError(
            f"--tracking-uri must be a URI string such as http://HOST:5000 (got {shown(uri)})"
        )
    check_no_credentials(uri, "--tracking-uri")
    if "://" not in uri and ":" not in uri.split("/", 1)[0]:
        return  # a plain path: MLflow's file store
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in TRACKING_SCHEMES:
        raise InputError(
            f"--tracking-uri {shown(uri)}: unknown scheme {shown(scheme)}; give "
            "http(s)://HOST:PORT, sqlite:////ABS/mlflow.db or another MLflow tracking URI"
        )


def check_tracking_reachable(uri: str | None, timeout: float = 5.0) -> None:
    """A tracking store that answers, checked before anything is written: an ``http(s)://``
    server answers HTTP at all (any status: a login it asks for is MLflow's to check), a
    ``sqlite:///`` file can be created in its directory. Other stores are left to MLflow."""
    import urllib.error
    import urllib.request

    if not uri:
        return
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    shown_uri = shown(uri)
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            why = getattr(reason, "strerror", None) or str(reason) or type(err).__name__
            raise InputError(
                f"--tracking-uri {shown_uri}: no MLflow server answers there ({why}); start it "
                "(mlflow server --host 127.0.0.1 ...) or fix the URI"
            ) from None
    if scheme == "sqlite":
        path = uri.split(":///", 1)[-1].split("?", 1)[0]
        if not path or path == ":memory:":
            return
        folder = Path(path).expanduser().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(
                f"--tracking-uri {shown_uri}: {shown(str(folder))} is not a directory this user "
                "can write (MLflow creates the database there); create it or fix the URI"
            )


def check_address(address: str | None, timeout: float = 3.0) -> None:
    """A Ray address that can be joined, checked without Ray (which would hang on an address
    where nothing listens): ``auto`` needs a running cluster on this machine (``RAY_ADDRESS`` or
    the one `ray start` recorded); ``HOST:PORT`` or ``ray://HOST:PORT`` something answering."""
    if not address or address == "local":
        return
    target = address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS") or recorded_cluster() or ""
        if not target:
            raise InputError(
                "--address auto: no running Ray cluster on this machine (no RAY_ADDRESS, nothing "
                "started by `ray start`); start one with `ray start --head`, or leave --address "
                "out for a private local Ray"
            )
    host, sep, port = target.split("://", 1)[-1].split("/", 1)[0].rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(f"--address {shown(address)}: give HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise InputError(
            f"--address {shown(address)}: nothing answers at {host}:{port} "
            f"({err.strerror or type(err).__name__}); start the cluster (`ray start --head`) or "
            "fix the address"
        ) from None


# Object stores pyarrow.fs opens from a URI (what Tune and the evidence writer use).
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")
STORAGE_TIMEOUT_S = 20.0
# The longest path a study writes under its directory (a trial's checkpoint, an evidence file).
LONGEST_STUDY_PATH = len("/tune/trial_00000000/checkpoint_000000/checkpoint.pt") + 64


def check_storage(storage: str | None) -> None:
    """A local ``--storage`` must be a directory this user can write (a file created and removed
    there proves it) with room for a study, or creatable in one, with a path the filesystem can
    hold; an object-store URI must carry no credentials, name a store pyarrow opens, and answer
    (its bucket found) within ``STORAGE_TIMEOUT_S``."""
    if storage and "://" in storage:
        check_no_credentials(storage, "--storage")
        scheme = storage.split("://", 1)[0].lower()
        if scheme not in STORAGE_SCHEMES:
            raise InputError(
                f"--storage {shown(storage)}: {shown(scheme)} is not an object store sharpcal "
                f"can write (give a directory, or s3://BUCKET/PREFIX; pyarrow also opens "
                f"{', '.join(s for s in STORAGE_SCHEMES if s not in ('s3', 'file'))})"
            )
        _check_store_answers(storage)
        state = Path(os.environ.get("SHARPCAL_STATE", "~/sharpcal-state")).expanduser()
        _check_writable_dir(state, "SHARPCAL_STATE (where S3 studies keep their metadata)")
        return
    _check_writable_dir(Path(storage or "studies").expanduser(), "--storage")


def _check_store_answers(storage: str) -> None:
    """The object store at ``storage`` opens and its bucket (the URI's first segment) exists,
    within ``STORAGE_TIMEOUT_S`` (a store's client retries for minutes where nothing answers)."""
    import threading

    import pyarrow.fs as pafs

    outcome: dict[str, Any] = {}

    def probe() -> None:
        try:
            fs, path = _quick_fs(storage)
            bucket = path.split("/", 1)[0]
            outcome["found"] = fs.get_file_info(bucket).type != pafs.FileType.NotFound
        except Exception as err:  # noqa: BLE001 - pyarrow's errors are many; each is one line
            outcome["error"] = err

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(STORAGE_TIMEOUT_S)
    if thread.is_alive():
        raise InputError(
            f"--storage {shown(storage)}: the object store did not answer in "
            f"{STORAGE_TIMEOUT_S:.0f} s; check its endpoint (AWS_ENDPOINT_URL) and network"
        )
    if "error" in outcome:
        reason = redact_credentials(str(outcome["error"]).splitlines()[0])[:160]
        raise InputError(
            f"--storage {shown(storage)}: the object store cannot be opened ({reason}); check "
            "the URI, its endpoint (AWS_ENDPOINT_URL) and the credentials in the environment"
        )
    if not outcome.get("found"):
        raise InputError(
            f"--storage {shown(storage)}: its bucket does not exist (or these credentials cannot "
            "see it); create it or fix the URI"
        )


def _quick_fs(storage: str) -> tuple[Any, str]:
    """The filesystem of ``storage`` for a quick probe: S3 (without settings in the URI's query)
    tried once, not retried for seconds as the study's own client is."""
    import pyarrow.fs as pafs

    from trainables.layout import resolve_fs

    if storage.lower().startswith("s3://") and "?" not in storage:
        once = pafs.AwsStandardS3RetryStrategy(max_attempts=1)
        fs = pafs.S3FileSystem(
            endpoint_override=os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL"),
            retry_strategy=once,
            connect_timeout=5,
            request_timeout=10,
        )
        return fs, storage.split("://", 1)[1]
    return resolve_fs(storage)


def check_path_fits(path: Path, what: str, longest_inside: int = LONGEST_STUDY_PATH) -> None:
    """Every segment of ``path`` fits the filesystem's name limit, and ``path`` plus the
    longest path written inside it (``longest_inside`` bytes) fits its path limit."""
    existing = path
    while True:
        try:
            if existing.exists():
                break
        except OSError:  # a segment too long to even look up
            pass
        if existing == existing.parent:
            break
        existing = existing.parent
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise InputError(
                f"{what} {shown(str(path))}: the segment {shown(part)} has "
                f"{len(os.fsencode(part))} bytes, more than this filesystem's {name_max}; "
                "use a shorter name"
            )
    if len(os.fsencode(str(path))) + longest_inside > path_max:
        raise InputError(
            f"{what} {shown(str(path))}: the path is too long for the files a study writes in "
            f"it (this filesystem takes {path_max} bytes); use a shorter directory"
        )


def _check_writable_dir(path: Path, what: str) -> None:
    check_path_fits(path.absolute(), what)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {shown(str(path))} is a file, not a directory; pass a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"{what} {shown(str(path))}: {existing} is not a directory this user can write; "
            "pass a writable directory"
        )
    from study.storage.files import writable_problem

    problem = writable_problem(existing)  # a read-only mount, /proc, a full disk
    if problem:
        raise InputError(f"{what} {shown(str(path))}: {existing} {problem}; pass another directory")


def reachable_configs(space: Space) -> list[TrainConfig]:
    """The fixed settings, each point and every combination the search can reach
    (``reachable_combinations``): among them, every place a trial reads from and runs on."""
    settings = [{}, *space.points, *reachable_combinations(space)]
    return [space.train_config(s) for s in settings]


def check_ray_temp() -> None:
    """A private local Ray can start: its temporary directory is writable and short enough for
    its sockets (``study.runtime.ray_temp``)."""
    from study.runtime.ray_temp import ray_temp_problem

    problem = ray_temp_problem()
    if problem:
        raise InputError(problem)


def check_runs_here(space: Space) -> None:
    """For a study on this machine's local Ray: Ray's temporary directory is usable, every device
    exists, every dataset's files are found (or will be downloaded) and every Fashion-MNIST-C
    generated earlier is intact, before Ray starts."""
    from trainables.config import ConfigError
    from trainables.data.datasets import DataError, check_data_available
    from trainables.engine.loop import resolve_device

    check_ray_temp()
    seen: set[tuple[Any, ...]] = set()
    for cfg in reachable_configs(space):
        ood = cfg.ood.model_dump_json() if cfg.ood is not None else None
        key = (cfg.device, cfg.dataset, cfg.data_root, cfg.download, ood)
        if key in seen:
            continue
        seen.add(key)
        try:
            resolve_device(cfg.device)
            check_data_available(cfg.dataset, cfg.data_root, cfg.download)
            check_fashion_mnist_c(cfg)
        except (ConfigError, DataError) as err:
            raise InputError(str(err)) from None


def check_fashion_mnist_c(cfg: TrainConfig) -> None:
    """The Fashion-MNIST-C that ``cfg``'s ``ood.fashion_mnist_c`` reads, when generated before,
    is unchanged (``fashion_mnist_c.check_cached``): a changed file is a one-line ``DataError``
    now rather than after a trial has trained."""
    section = cfg.ood.fashion_mnist_c if cfg.ood is not None else None
    if section is None:
        return
    from trainables.data.fashion_mnist_c import check_cached
    from trainables.evaluation.ood import fashion_mnist_c_dir

    check_cached(fashion_mnist_c_dir(section, cfg.data_root))
