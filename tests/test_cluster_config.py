"""cluster.yaml passes Ray's own validation; broken copies fail it with Ray's message."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster.yaml"
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


def _config() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_passes_rays_schema_and_validation():
    config = _config()
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))
    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_keeps_services_on_loopback_and_holds_no_secrets():
    text = CLUSTER.read_text()
    assert "--dashboard-host=127.0.0.1" in text
    assert "--host 127.0.0.1 --port 5000" in text
    assert "0.0.0.0" not in text
    for secret in ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", "aws_access_key_id"):
        assert secret not in text


def test_non_integer_gpu_count_fails_with_rays_message():
    config = _config()
    config["available_node_types"]["gpu_spot"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'integer'"):
        validate_config(prepare_config(config))


def test_missing_head_node_type_fails_with_rays_message():
    config = _config()
    del config["head_node_type"]
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(config))


def _kuberay() -> tuple[dict, dict]:
    """The RayCluster and the NetworkPolicy of the KubeRay example."""
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kuberay-raycluster.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs}
    return by_kind["RayCluster"], by_kind["NetworkPolicy"]


def test_kuberay_example_has_a_cpu_head_gpu_workers_from_zero_and_nothing_exposed():
    cluster, _ = _kuberay()
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and head["rayStartParams"]["num-cpus"] == "0"
    (group,) = spec["workerGroupSpecs"]
    assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
    (worker,) = group["template"]["spec"]["containers"]
    gpus = worker["resources"]["limits"]["nvidia.com/gpu"]
    assert isinstance(gpus, int) and gpus >= 1
    mlflow = next(c for c in head["template"]["spec"]["containers"] if c["name"] == "mlflow")
    assert "--host 127.0.0.1" in mlflow["args"][0]
    images = [c["image"] for g in (head, group) for c in g["template"]["spec"]["containers"]]
    assert all(":" in i and not i.endswith(":latest") for i in images)


def _values(node) -> list[str]:
    """Every string value of a parsed YAML document (keys left out)."""
    if isinstance(node, dict):
        return [v for value in node.values() for v in _values(value)]
    if isinstance(node, list):
        return [v for value in node for v in _values(value)]
    return [str(node)]


def test_kuberay_turns_on_token_auth_keeps_the_dashboard_on_loopback_and_fences_the_head():
    cluster, policy = _kuberay()
    spec = cluster["spec"]
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    head_labels = {"ray.io/cluster": "sharpcal", "ray.io/node-type": "head"}
    assert policy["spec"]["podSelector"]["matchLabels"] == head_labels
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    assert source == {"podSelector": {"matchLabels": {"ray.io/cluster": "sharpcal"}}}
    assert "ports" not in rule  # every port, but only from the cluster's own pods
    values = " ".join(_values(cluster) + _values(policy)).lower()
    assert "0.0.0.0" not in values and "password" not in values
    assert "auth_token" not in values and "ray_auth_token" not in values  # no token in the file


def test_cluster_yaml_turns_on_token_auth_with_the_token_from_the_users_machine():
    config = _config()
    for command in (*config["head_start_ray_commands"], *config["worker_start_ray_commands"]):
        if "ray start" in command:
            assert command.startswith("export RAY_AUTH_MODE=token;"), command
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "RAY_AUTH_TOKEN=" not in CLUSTER.read_text()
