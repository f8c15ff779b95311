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


def test_kuberay_example_has_a_cpu_head_gpu_workers_from_zero_and_nothing_exposed():
    cluster = yaml.safe_load((ROOT / "deploy" / "kuberay-raycluster.yaml").read_text())
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
    text = (ROOT / "deploy" / "kuberay-raycluster.yaml").read_text().lower()
    assert "secret" not in text.replace("no secrets", "") and "password" not in text
