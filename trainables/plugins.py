"""A user's own parts, from their own code: plugins.

A plugin is a Python module whose import registers parts (``@register_method("my_sam")``, ...),
exactly as sharpcal's built-in parts register themselves. Two ways to name one:

- in a space file, ``plugins: [my_pkg.parts, ./my_parts.py]``: a module importable by its dotted
  name, or a ``.py`` file (relative to the space file). The driver imports them before it checks
  the space, and the trials import them before they read their settings: a file, or a package
  that is not installed, travels to every Ray worker with the job's runtime environment
  (``study.runtime.tuner``); an installed package is expected to be installed on every node.
- an installed distribution's entry point in the group ``sharpcal.plugins`` (its value a module,
  or a function to call): loaded by every process that reads a registry, on the driver and on
  every worker alike.

A plugin that does not import, registers a name another part holds, or registers a part that
does not keep its kind's contract is one ``PluginError`` line, before anything runs.

Which to use where:

- a ``.py`` file, or a package that is not installed (a directory on the driver's ``sys.path``):
  the study ships it to every Ray worker, on this machine or a cluster, in the job's runtime
  environment (Ray's ``py_modules``: one file, or the package's directory, zipped and uploaded,
  ``.gitignore``d files, ``__pycache__`` and ``*.pyc`` left out, 512 MiB at most); a worker
  imports the file where it lies when its node has it (a shared filesystem), else the shipped
  copy by its module name.
- an installed package (``pip install``, a ``sharpcal.plugins`` entry point): never shipped; it
  must be installed on every node of the cluster, in the same version (the cluster's image).

After Ray starts, one small Ray task imports every plugin on a worker (``check_on_worker``): a
plugin a worker cannot import is refused in one line before any trial runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from trainables.errors import PluginError, SharpcalError

ENTRY_POINT_GROUP = "sharpcal.plugins"
_entry_points_loaded = False


def is_file_spec(spec: str) -> bool:
    """Whether a plugin is named by a file (``./parts.py``) rather than a module name."""
    return spec.endswith(".py") or "/" in spec or spec.startswith(".")


def module_name(spec: str) -> str:
    """The name a plugin is imported under: its module name, or a file's stem."""
    return Path(spec).stem if is_file_spec(spec) else spec


def resolve_spec(spec: str, base: Path | None) -> str:
    """A file plugin as an absolute path (relative to ``base``, the space file's directory);
    a module name as it is. ``PluginError`` for a file that is not there."""
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError(f"plugin {spec!r}: name a module (my_pkg.parts) or a file (./parts.py)")
    if not is_file_spec(spec):
        return spec
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    path = path.resolve()
    if path.suffix != ".py" or not path.is_file():
        raise PluginError(f"plugin {spec}: no Python file at {path}")
    return str(path)


def _where(err: BaseException, spec: str) -> str:
    """``file:line`` of the plugin's own code where ``err`` was raised (its last frame there),
    else of the deepest frame."""
    if isinstance(err, SyntaxError) and err.filename:
        return f"{err.filename}:{err.lineno}"
    frames = traceback.extract_tb(err.__traceback__)
    name = module_name(spec).split(".")[0]
    mine = [f for f in frames if name in Path(f.filename).parts or Path(f.filename).stem == name]
    frame = (mine or frames or [None])[-1]
    return f"{frame.filename}:{frame.lineno}" if frame else "?"


def load_plugin(spec: str) -> str:
    """Import one plugin (a module name, or an absolute ``.py`` path from ``resolve_spec``);
    returns its module name. Importing it again is a no-op."""
    name = module_name(spec)
    if is_file_spec(spec):
        existing = sys.modules.get(name)
        if existing is not None:
            if Path(getattr(existing, "__file__", "") or "").resolve() == Path(spec):
                return name
            raise PluginError(
                f"plugin {spec}: its module name {name!r} is taken by another module "
                f"({getattr(existing, '__file__', 'built in')}); rename the file"
            )
        loader_spec = importlib.util.spec_from_file_location(name, spec)
        if loader_spec is None or loader_spec.loader is None:
            raise PluginError(f"plugin {spec}: not a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except BaseException as err:
            sys.modules.pop(name, None)
            _raise_for(err, spec)
        return name
    if name in sys.modules:
        return name
    try:
        importlib.import_module(name)
    except BaseException as err:
        _raise_for(err, spec)
    return name


def _raise_for(err: BaseException, spec: str) -> None:
    if isinstance(err, PluginError):  # a registration refused: say which plugin made it
        raise (err if spec in str(err) else PluginError(f"plugin {spec}: {err}")) from None
    if isinstance(err, ModuleNotFoundError) and err.name and f"{spec}.".startswith(f"{err.name}."):
        raise PluginError(
            f"plugin {spec}: no module {err.name!r} here; install it, put it on PYTHONPATH, or "
            "name a .py file (./parts.py)"
        ) from None
    if isinstance(err, SharpcalError):  # e.g. a registry's InputError: already one line
        raise PluginError(f"plugin {spec}: {err}") from None
    if isinstance(err, (KeyboardInterrupt, SystemExit)):
        raise err
    reason = str(err).splitlines()[0] if str(err) else ""
    raise PluginError(
        f"plugin {spec} does not import: {type(err).__name__}"
        f"{': ' + reason if reason else ''} ({_where(err, spec)})"
    ) from None


def load_plugins(specs: Iterable[str], base: Path | None = None) -> list[str]:
    """Import every plugin of ``specs`` (``resolve_spec`` against ``base`` first) and the
    installed ``sharpcal.plugins`` entry points; returns the module names of ``specs``."""
    load_entry_points()
    return [load_plugin(resolve_spec(spec, base)) for spec in specs]


def load_trial_plugins(specs: Iterable[str]) -> list[str]:
    """Import a study's plugins (as ``Space.plugins`` holds them: module names and absolute
    files) and the installed entry points in a Ray worker, before the trial reads its settings.
    A file its node does not have is imported by its module name from the copy the job's
    runtime environment shipped (``py_modules``); returns the modules' names."""
    load_entry_points()
    names = []
    for spec in specs:
        if is_file_spec(spec) and not Path(spec).is_file():
            name = module_name(spec)
            if name not in sys.modules and importlib.util.find_spec(name) is None:
                raise PluginError(
                    f"plugin {spec}: not on this node and not shipped with the job's runtime "
                    "environment (py_modules); put it on a filesystem every node reads, or "
                    "start the study from the driver that has it"
                )
            try:
                names.append(load_plugin(name))
            except PluginError as err:
                shown = str(err).replace(f"plugin {name}", f"plugin {spec} (its shipped copy)", 1)
                raise PluginError(shown) from None
        else:
            names.append(load_plugin(spec))
    return names


def check_on_worker(specs: list[str]) -> dict[str, str]:
    """What the probe task runs on a Ray worker: import ``specs`` (``load_trial_plugins``);
    returns each plugin's module file there. ``PluginError`` when one does not import."""
    files = {}
    for spec, name in zip(specs, load_trial_plugins(specs), strict=True):
        files[spec] = str(getattr(sys.modules.get(name), "__file__", "") or "")
    return files


SHARPCAL_PACKAGES = ("study", "trainables", "search_spaces")


def ship_paths(specs: Iterable[str]) -> list[str]:
    """The local paths to ship to Ray's workers for ``specs`` (already imported here): every
    file plugin, and for a module plugin whose top-level package is not an installed
    distribution's (nor sharpcal's own), that package's directory (or its single file). An
    installed package is expected on every node and is not shipped."""
    from importlib.metadata import packages_distributions

    installed: Mapping[str, Any] | None = None  # read when needed: it takes seconds
    paths: list[str] = []
    for spec in specs:
        if is_file_spec(spec):
            paths.append(spec)
            continue
        top = spec.split(".")[0]
        if top in SHARPCAL_PACKAGES or top in sys.stdlib_module_names:
            continue
        if installed is None:
            installed = packages_distributions()
        if top in installed:
            continue
        module = sys.modules.get(top)
        locations = list(getattr(module, "__path__", None) or [])
        if len(locations) == 1:
            paths.append(str(Path(locations[0]).resolve()))
        elif getattr(module, "__file__", None) and not locations:
            paths.append(str(Path(module.__file__).resolve()))  # type: ignore[union-attr, arg-type]
    return list(dict.fromkeys(paths))


def load_entry_points() -> None:
    """Import every installed ``sharpcal.plugins`` entry point, once per process."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        spec = (
            f"{point.value} (entry point {point.name} of {point.dist.name if point.dist else '?'})"
        )
        try:
            loaded = point.load()
            if callable(loaded) and not isinstance(loaded, type(sys)):
                loaded()
        except BaseException as err:
            _raise_for(err, spec)
