"""The nodes of a reachable Ray cluster, counted by node type, from Ray's public state API."""

from __future__ import annotations

import contextlib
import socket
from collections import Counter

from trainables.nodes import NODE_TYPE_LABEL

HEAD = "head"
UNLABELLED = "other"  # a worker whose node type sets no `node-type` label


def nodes_by_type(address: str = "auto", timeout: float = 10.0) -> dict[str, int] | None:
    """Alive nodes of the cluster at ``address`` (``auto``: the one this machine's Ray runs) by
    node type (``cluster.yaml``'s ``node-type`` label; ``head``), or None when no cluster can be
    reached there (or Ray's state API, the ``cluster`` extra, is not installed)."""
    try:
        from ray.util.state import list_nodes
    except ImportError:
        return None
    from study.tuner import is_loopback_address, loopback_only

    if address != "auto" and not _listening(address):
        return None  # Ray would retry a dead address for 40 s
    scope = loopback_only() if is_loopback_address(address) else contextlib.nullcontext()
    try:
        with scope:
            # every node, filtered here: with a server-side filter Ray counts the dead nodes it
            # leaves out as missing output and raises
            nodes = list_nodes(address=address, detail=True, timeout=timeout)
    except Exception:  # noqa: BLE001 - unreachable, no dashboard, no cluster: nothing to show
        return None
    counts: Counter[str] = Counter()
    for node in (n for n in nodes if n.state == "ALIVE"):
        labels = node.labels or {}
        counts[HEAD if node.is_head_node else labels.get(NODE_TYPE_LABEL, UNLABELLED)] += 1
    return dict(sorted(counts.items()))


def _listening(address: str) -> bool:
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False
