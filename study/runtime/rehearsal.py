"""A rehearsal of ``cluster.yaml``'s autoscaled cloud on one machine: Ray's own autoscaler (v1,
the one ``ray up`` runs) with Ray's fake multi-node provider, which starts each "instance" as one
more raylet on this machine.

The worker node types are read from ``cluster.yaml`` (names, resources, labels, min/max workers;
a fake GPU is a resource count only, so trials train on the CPU); the head keeps its ``CPU: 0``.
Every process binds 127.0.0.1, and only the processes this rehearsal started are ever stopped
(never ``ray stop``, which ends every Ray process on the machine): each carries a marker in its
environment, inherited by the autoscaler's fake nodes too.

Facts of Ray 2.60 this relies on (checked on its source, see the README's "Run on a cluster"):
the fake provider names its head type ``ray.head.default``; the autoscaler reads its config raw
(every key present); ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps 127.0.0.1 from being rewritten
to the machine's address; a node killed from outside is reaped by the idle timeout, so the
rehearsal's is short.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from trainables.trial.nodes import NODE_TYPE_LABEL

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
FAKE_HEAD_TYPE = "ray.head.default"  # the fake provider's head, whatever cluster.yaml calls it
MARK_ENV = "SHARPCAL_REHEARSAL_MARK"
# Stopped in this order: the autoscaler first (so it launches nothing more), the GCS last.
STOP_ORDER = (
    "autoscaler/_private/monitor.py",
    "raylet",
    "log_monitor.py",
    "dashboard",
    "ray.util.client.server",
    "gcs_server",
)
# Keys the autoscaler indexes without defaults (the fake provider's example.yaml, which would
# fill them, is not in Ray's wheel).
EMPTY_KEYS: dict[str, Any] = {
    "auth": {},
    "docker": {},
    "initialization_commands": [],
    "setup_commands": [],
    "head_setup_commands": [],
    "worker_setup_commands": [],
    "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
    "file_mounts": {},
    "cluster_synced_files": [],
    "file_mounts_sync_continuously": False,
    "rsync_exclude": [],
    "rsync_filter": [],
}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fake_cluster_config(
    cluster: dict[str, Any],
    gcs_address: str,
    idle_timeout_minutes: float,
    max_workers: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The autoscaler config of the rehearsal: ``cluster``'s worker node types (``max_workers``
    may lower a type's maximum) with its head's resources, on the fake provider."""
    head_type = cluster["head_node_type"]
    types = copy.deepcopy(cluster["available_node_types"])
    head = types.pop(head_type)
    workers = {}
    for name, spec in types.items():
        workers[name] = {
            "resources": spec["resources"],
            "labels": spec.get("labels", {NODE_TYPE_LABEL: name}),
            "min_workers": spec.get("min_workers", 0),
            "max_workers": (max_workers or {}).get(name, spec.get("max_workers", 0)),
            "node_config": {},
        }
    return {
        "cluster_name": "sharpcal-rehearsal",
        "max_workers": sum(w["max_workers"] for w in workers.values()),
        "upscaling_speed": cluster.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "launch_multiple": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": {
            FAKE_HEAD_TYPE: {"resources": head["resources"], "node_config": {}, "max_workers": 0},
            **workers,
        },
        "head_node_type": FAKE_HEAD_TYPE,
        **EMPTY_KEYS,
    }


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class FakeCluster:
    """Ray's autoscaler on the fake provider, started with ``start()`` and stopped with
    ``stop()`` (a context manager too): a head on 127.0.0.1 holding ``cluster.yaml``'s head
    resources, its worker types launched on demand and terminated after ``idle_timeout_minutes``."""

    def __init__(
        self,
        workdir: Path,
        cluster_yaml: Path = CLUSTER_YAML,
        idle_timeout_minutes: float = 0.1,
        max_workers: dict[str, int] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.mark = uuid.uuid4().hex
        self.temp_dir = Path(f"/tmp/sc-{self.mark[:8]}")  # Ray's sessions and logs
        cluster = yaml.safe_load(Path(cluster_yaml).read_text())
        self.config = fake_cluster_config(cluster, self.address, idle_timeout_minutes, max_workers)

    def env(self) -> dict[str, str]:
        """What a driver of this cluster (``study run --address``) needs in its environment."""
        return {
            **os.environ,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def start(self) -> None:
        """``ray start --head`` with the autoscaler, every port on 127.0.0.1."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "autoscaler.yaml"
        config.write_text(yaml.safe_dump(self.config, sort_keys=False))
        # Short: Ray's socket paths under it must stay within 107 bytes.
        temp_dir = self.temp_dir
        tmp = self.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        env = {
            **self.env(),
            MARK_ENV: self.mark,
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "AUTOSCALER_METRIC_PORT": str(free_port()),
            "DASHBOARD_METRIC_PORT": str(free_port()),
            "TMPDIR": str(tmp),
        }
        head = self.config["available_node_types"][FAKE_HEAD_TYPE]["resources"]
        ray = Path(sys.executable).with_name("ray")
        command = [
            str(ray), "start", "--head", "--node-ip-address", "127.0.0.1",
            "--port", str(self.port), f"--autoscaling-config={config}",
            "--num-cpus", str(head.get("CPU", 0)), "--num-gpus", str(head.get("GPU", 0)),
            "--object-store-memory", str(200 * 1024**2), "--temp-dir", str(temp_dir),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--ray-client-server-port", str(free_port()), "--disable-usage-stats",
        ]  # fmt: skip
        log = (self.workdir / "ray-start.log").open("w")
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed: see {self.workdir / 'ray-start.log'}")

    def pids(self) -> list[int]:
        """Every process this cluster started (its marker in their environment)."""
        needle = f"{MARK_ENV}={self.mark}".encode()
        own = os.getpid()
        found = []
        for entry in os.listdir("/proc"):
            if (
                entry.isdigit()
                and int(entry) != own
                and needle in _environ(int(entry)).split(b"\0")
            ):
                found.append(int(entry))
        return found

    def preempt(self, node_id: str) -> int:
        """Take node ``node_id`` away as a spot reclaim does: SIGKILL its raylet and everything
        under it. The number of processes killed."""
        victims = [p for p in self.pids() if f"--node_id={node_id}" in _cmdline(p)]
        for pid in list(victims):
            victims += _children(pid)
        for pid in set(victims):
            _signal(pid, signal.SIGKILL)
        return len(set(victims))

    def stop(self, timeout: float = 20.0) -> list[int]:
        """SIGTERM this cluster's processes in ``STOP_ORDER``, SIGKILL what is left after
        ``timeout``; the pids still found after that (none expected)."""
        found = self.pids()
        for key in STOP_ORDER:
            for pid in found:
                if key in _cmdline(pid):
                    _signal(pid, signal.SIGTERM)
            time.sleep(0.3)
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in self.pids():
            _signal(pid, signal.SIGKILL)
        time.sleep(0.5)
        left = self.pids()
        if not left:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left

    def __enter__(self) -> FakeCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
