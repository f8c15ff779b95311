"""The nodes of a reachable Ray cluster, counted by node type, from Ray's public state API.

Ray's state API answers through the cluster's dashboard, which ``ray start`` runs (with the
``cluster`` extra) and a driver's private local Ray does not (``init_ray`` starts it without
one, on loopback). Asked for ``auto``, Ray itself falls back to any GCS process it finds on the
machine, a study driver's own included, turns its loopback address into the machine's address,
where that GCS does not listen, and retries for about 40 s with warnings. So ``auto`` is resolved
here, as ``study run --address auto`` resolves it, to the cluster ``ray start`` recorded (or
``RAY_ADDRESS``), and the dashboard's address is read from the cluster's GCS once and checked
before Ray's client is asked: where any of them is missing, there is nothing to list, at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import Counter
from pathlib import Path

from trainables.trial.nodes import NODE_TYPE_LABEL

HEAD = "head"
UNLABELLED = "other"  # a worker whose node type sets no `node-type` label


def nodes_by_type(address: str = "auto", timeout: float = 10.0) -> dict[str, int] | None:
    """Alive nodes of the cluster at ``address`` (``auto``: the one ``ray start`` runs on this
    machine, or ``RAY_ADDRESS``; never a study driver's private Ray, which has no state API) by
    node type (``cluster.yaml``'s ``node-type`` label; ``head``), or None when no cluster with
    a dashboard can be reached there (or Ray's state API, the ``cluster`` extra, is not
    installed). Returns within a few seconds when there is none."""
    target = started_cluster() if address == "auto" else address
    if not target or not _listening(target):
        return None  # Ray would retry a dead address for 40 s
    try:
        from ray.util.state import list_nodes
    except ImportError:
        return None
    from study.runtime.tuner import is_loopback_address, loopback_only

    scope = loopback_only() if is_loopback_address(target) else contextlib.nullcontext()
    try:
        with scope:
            api = _api_server(target, timeout)
            if api is None:
                return None
            # every node, filtered here: with a server-side filter Ray counts the dead nodes it
            # leaves out as missing output and raises
            nodes = list_nodes(address=api, detail=True, timeout=timeout)
    except Exception:  # noqa: BLE001 - unreachable, no dashboard, no cluster: nothing to show
        return None
    counts: Counter[str] = Counter()
    for node in (n for n in nodes if n.state == "ALIVE"):
        labels = node.labels or {}
        counts[HEAD if node.is_head_node else labels.get(NODE_TYPE_LABEL, UNLABELLED)] += 1
    return dict(sorted(counts.items()))


def started_cluster() -> str | None:
    """What ``auto`` names: ``RAY_ADDRESS``, else the cluster ``ray start`` recorded on this
    machine (None: neither)."""
    named = os.environ.get("RAY_ADDRESS", "").strip()
    if named and named not in ("auto", "local"):
        return named
    return recorded_cluster()


def _api_server(address: str, timeout: float) -> str | None:
    """The URL of the dashboard (Ray's state API) of the cluster at ``address``: an http(s)
    or Ray Client address as it is; for a GCS address, the dashboard it registered, read once
    (Ray's own lookup retries 20 times, 2 s apart), None when there is none or it does not
    answer."""
    if "://" in address:
        return address
    from ray._private import ray_constants
    from ray._raylet import GcsClient

    found = GcsClient(address=address).internal_kv_get(
        ray_constants.DASHBOARD_ADDRESS.encode(),
        ray_constants.KV_NAMESPACE_DASHBOARD,
        timeout=timeout,
    )
    if not found:
        return None
    dashboard = found.decode()
    return f"http://{dashboard}" if _listening(dashboard) else None


def _listening(address: str) -> bool:
    host, _, port = address.split("://", 1)[-1].split("/", 1)[0].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


def recorded_cluster() -> str | None:
    """The address `ray start` recorded on this machine (what Ray's ``auto`` reads), if any."""
    recorded = Path(os.environ.get("RAY_TMPDIR", "/tmp/ray")) / "ray_current_cluster"
    try:
        return recorded.read_text().strip() or None
    except OSError:
        return None
