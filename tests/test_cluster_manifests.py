"""Cluster launcher YAML, KubeRay manifests and the Dockerfile: parse, required fields, and
versions that agree with the pins in requirements/constraints.txt."""
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


PINS = _pins()
RAY, TORCH = PINS["ray"], PINS["torch"]


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _images(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image" and isinstance(v, str)] + [
            i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def test_pins_are_installable_from_pypi():
    """PyPI has no local version labels (torch 2.13.0+cpu): `torch==2.13.0` still takes the CPU
    file where a machine keeps one, and resolves anywhere else."""
    assert [name for name, version in PINS.items() if "+" in version] == []


def test_pyproject_ranges_admit_the_pins():
    text = (REPO / "pyproject.toml").read_text()
    assert f'"ray[default,train,tune]>={RAY[:4]}' in text and f'"torch>={TORCH[:4]}' in text


def test_cluster_launcher_yaml():
    cfg = _load("aws.yaml")
    import json

    import jsonschema
    import ray

    # Ray's own schema for cluster launcher files (the one `ray up` validates against).
    jsonschema.validate(cfg, json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text()))
    assert ".gitignore" in cfg["rsync_filter"]  # .venv and runs/ stay on the laptop
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cfg, key
    assert cfg["provider"]["type"] == "aws"
    nodes = cfg["available_node_types"]
    assert cfg["head_node_type"] in nodes
    gpu = nodes["gpu_worker"]
    assert gpu["min_workers"] < gpu["max_workers"]  # autoscaling
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))
    for node in nodes.values():
        assert node["node_config"]["IamInstanceProfile"]["Name"]  # S3 through the instance profile
    assert cfg["docker"]["image"] == f"rayproject/ray:{RAY}-py311-gpu"
    setup = " ".join(cfg["setup_commands"])
    assert f"torch=={TORCH}" in setup and f"ray[default,train,tune]=={RAY}" in setup
    assert "requirements/constraints.txt" in setup


def _pod_specs(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _check_ray_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == RAY
    workers = spec["workerGroupSpecs"]
    gpu = [g for g in workers if any("nvidia.com/gpu" in c["resources"]["requests"]
                                     for c in g["template"]["spec"]["containers"])]
    assert gpu, "a GPU worker group"
    for container in _pod_specs(spec):
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert container["resources"]["limits"]
        secrets = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
        assert secrets == ["metaad-s3"]  # S3 credentials from a Kubernetes Secret
        assert not any("AWS_SECRET" in str(e) for e in container.get("env", []))


def test_kuberay_raycluster():
    doc = _load("kuberay/raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    _check_ray_cluster_spec(doc["spec"])


def test_kuberay_rayjob():
    doc = _load("kuberay/rayjob.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["entrypoint"].startswith("python -m metaad_dist train ")
    assert "trainer=ray" in spec["entrypoint"] and "storage=s3" in spec["entrypoint"]
    _check_ray_cluster_spec(spec["rayClusterSpec"])


def test_images_and_dockerfile_agree_with_pins():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{RAY}-py311-gpu" in dockerfile
    assert f"torch=={TORCH}" in dockerfile and "requirements/constraints.txt" in dockerfile
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    for name in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
        for image in _images(_load(name)):
            assert image == f"metaad-dist:{version}-ray{RAY}-gpu", image


def test_no_credentials_in_cluster_files():
    for path in CLUSTER.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"AKIA[0-9A-Z]{16}", text)
            assert not re.search(r"(?i)aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{16,}", text)
