"""Static checks of the Helm chart (``deploy/helm/sarclym-node``), in both layouts.

The chart rendered by the ``helm`` binary, else by the ``helm-python-sdk`` package (Helm's Go
SDK through ctypes), else those checks skip (see deploy/README.md); the rendered manifests
against the Kubernetes schemas when ``kubernetes-validate`` is installed. The other deploy files:
``test_deploy_files.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sarclym.node.config import StorageConfig, load_config
from tests.unit.test_deploy_files import CHART, ROOT, _yaml

# -- Helm -----------------------------------------------------------------------------------


def test_chart_metadata_and_values() -> None:
    chart = _yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == CHART.name
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in pyproject
    values = _yaml(CHART / "values.yaml")
    assert values["persistence"]["accessModes"] == ["ReadWriteMany"]
    assert values["worker"]["replicas"] >= 1
    assert values["worker"]["gpu"] >= 1
    # The single-host layout by default: state.db, one listener, workers on its node (null:
    # decided by the layout), each worker with its own health port.
    assert values["postgresql"]["enabled"] is False
    assert values["listener"]["replicas"] == 1
    assert values["worker"]["colocateWithListener"] is None
    assert values["worker"]["healthPort"] > 0
    templates = {p.name for p in (CHART / "templates").iterdir()}
    assert {"NOTES.txt", "configmap.yaml", "pvc.yaml", "worker-deployment.yaml"} <= templates


#: The several-hosts layout: state on an external PostgreSQL, two listeners, workers anywhere.
POSTGRESQL = {
    "postgresql": {
        "enabled": True,
        "host": "db.example.org",
        "passwordSecret": {"name": "sarclym-postgresql"},
        "sslMode": "verify-full",
    },
    "listener": {"replicas": 2},
}


class Renderer:
    """``helm template`` through the helm binary or the helm-python-sdk package."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.helm = shutil.which("helm")
        self.sdk: Any = None
        if self.helm is None:
            try:
                import helm_python
            except ImportError:
                pytest.skip(
                    "neither the helm binary nor the helm-python-sdk package is installed "
                    "(deploy/README.md: how the chart was rendered here)"
                )
            self.sdk = helm_python

    def lint(self, values: dict[str, Any] | None = None) -> list[str]:
        """Errors and warnings of ``helm lint`` (info messages are not returned)."""
        if self.helm is not None:
            file = self.tmp / "lint-values.json"
            file.write_text(json.dumps(values or {}))
            result = subprocess.run(
                [self.helm, "lint", "--strict", str(CHART), "-f", str(file)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            return [] if result.returncode == 0 else [result.stdout + result.stderr]
        report = self.sdk.lint(str(CHART), values or None)
        # Severities as in Helm's support package: 1 info, 2 warning, 3 error.
        messages = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] > 1]
        return messages + [str(e) for e in report["errors"]]

    def render(self, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The manifests of release ``demo`` in namespace ``pacs``; raises on a render error."""
        if self.helm is not None:
            file = self.tmp / "values.json"
            file.write_text(json.dumps(values or {}))
            result = subprocess.run(
                [self.helm, "template", "demo", str(CHART), "--namespace", "pacs", "-f", str(file)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if result.returncode != 0:
                raise RuntimeError(result.stderr)
            texts = [result.stdout]
        else:
            with self.sdk.Chart.load(str(CHART)) as chart:
                rendered = chart.render(values or {}, name="demo", namespace="pacs")
            texts = [text for name, text in sorted(rendered.items()) if name.endswith(".yaml")]
        return [doc for text in texts for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    return Renderer(tmp_path_factory.mktemp("helm"))


def _by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def test_helm_lint_is_clean(helm: Renderer) -> None:
    assert helm.lint() == []
    # Both layouts. (Helm lints with `fail` as a log line: the refusals are checked by render.)
    assert helm.lint(POSTGRESQL) == []


def test_helm_renders_listener_workers_redis_pvc_and_config(helm: Renderer) -> None:
    docs = _by_kind(helm.render())
    assert set(docs) == {
        ("ConfigMap", "demo-sarclym-node-config"),
        ("Deployment", "demo-sarclym-node-listener"),
        ("Deployment", "demo-sarclym-node-worker"),
        ("Deployment", "demo-sarclym-node-redis"),
        ("Service", "demo-sarclym-node"),
        ("Service", "demo-sarclym-node-redis"),
        ("PersistentVolumeClaim", "demo-sarclym-node-data"),
    }
    listener = docs["Deployment", "demo-sarclym-node-listener"]
    worker = docs["Deployment", "demo-sarclym-node-worker"]
    pvc = docs["PersistentVolumeClaim", "demo-sarclym-node-data"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]

    # Listener: one replica, never two at once, the DICOM and HTTP ports, both probes.
    assert listener["spec"]["replicas"] == 1
    assert listener["spec"]["strategy"]["type"] == "Recreate"
    main = _container(listener)
    assert main["args"] == ["serve"]
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {
        "dicom": 11112,
        "http": 11180,
    }
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    service = docs["Service", "demo-sarclym-node"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "dicom": 11112,
        "http": 11180,
    }
    assert service["spec"]["selector"] == listener["spec"]["selector"]["matchLabels"]

    # Workers: replicas from values, a GPU each, the CUDA image, on the listener's node.
    assert worker["spec"]["replicas"] == 2
    work = _container(worker)
    assert work["args"] == ["worker", "--workers", "1"]
    assert work["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert work["image"] == "sarclym-node:0.1.0-cuda"
    assert {p["name"]: p["containerPort"] for p in work["ports"]} == {"health": 11181}
    assert work["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert work["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    affinity = worker["spec"]["template"]["spec"]["affinity"]["podAffinity"]
    (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == listener["spec"]["selector"]["matchLabels"]

    # Both mount the PVC at /data and the configuration read-only; non-root, read-only root.
    for deployment in (listener, worker):
        pod = deployment["spec"]["template"]["spec"]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims == {"data": pvc["metadata"]["name"]}
        mounts = {m["mountPath"]: m for m in _container(deployment)["volumeMounts"]}
        assert mounts["/data"]["name"] == "data"
        assert mounts["/etc/sarclym"]["readOnly"] is True
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert _container(deployment)["securityContext"]["readOnlyRootFilesystem"] is True


def test_helm_config_map_is_a_valid_node_configuration(helm: Renderer, tmp_path: Path) -> None:
    docs = _by_kind(helm.render())
    config_map = docs["ConfigMap", "demo-sarclym-node-config"]
    file = tmp_path / "sarclym.yaml"
    file.write_text(config_map["data"]["sarclym.yaml"])
    for name in ("listener", "worker"):
        container = _container(docs["Deployment", f"demo-sarclym-node-{name}"])
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["SARCLYM_CONFIG"] == "/etc/sarclym/sarclym.yaml"
        config = load_config(file, environ={k: v for k, v in env.items() if k != "SARCLYM_CONFIG"})
        assert config.service.workers == 0
        assert config.service.queue_url == "redis://demo-sarclym-node-redis:6379/0"
        assert str(config.storage.data_dir) == "/data"
        assert (config.service.http_host, config.service.http_port) == ("0.0.0.0", 11180)
        assert config.worker.health_port == 11181  # the worker probes' port
        assert [t.kind for t in config.destinations.targets] == ["cstore"]
        assert not config.storage.shared_by_serves
    redis = docs["Service", "demo-sarclym-node-redis"]
    assert redis["spec"]["ports"][0]["port"] == 6379


def test_helm_values_change_what_they_say(helm: Renderer) -> None:
    cpu = _by_kind(helm.render({"worker": {"replicas": 3, "gpu": 0}}))
    worker = cpu["Deployment", "demo-sarclym-node-worker"]
    assert worker["spec"]["replicas"] == 3
    assert "nvidia.com/gpu" not in json.dumps(_container(worker)["resources"])
    assert _container(worker)["image"] == "sarclym-node:0.1.0"
    external = {"redis": {"enabled": False, "externalUrl": "redis://queue.example.org:6379/2"}}
    docs = _by_kind(helm.render(external))
    assert not [key for key in docs if "redis" in key[1]]
    text = docs["ConfigMap", "demo-sarclym-node-config"]["data"]["sarclym.yaml"]
    assert yaml.safe_load(text)["service"]["queue_url"] == "redis://queue.example.org:6379/2"
    secret = _by_kind(helm.render({"secretEnvFrom": "sarclym-secrets"}))
    for name in ("listener", "worker"):
        container = _container(secret["Deployment", f"demo-sarclym-node-{name}"])
        assert container["envFrom"] == [{"secretRef": {"name": "sarclym-secrets"}}]
    with pytest.raises(Exception, match="externalUrl"):
        helm.render({"redis": {"enabled": False}})


def _without_database_url(text: str) -> str:
    """The configuration, less ``storage.database_url`` while the schema lacks that key.

    The key belongs to the store layer of issue 18 (SQLite or PostgreSQL); until it is in
    :class:`~sarclym.node.config.StorageConfig`, the rest of the file is loaded without it.
    """
    data = yaml.safe_load(text)
    if "database_url" not in StorageConfig.model_fields:
        data["storage"].pop("database_url")
    return yaml.safe_dump(data)


def test_helm_postgresql_layout_has_no_affinity_and_two_listeners(
    helm: Renderer, tmp_path: Path
) -> None:
    docs = _by_kind(helm.render(POSTGRESQL))
    listener = docs["Deployment", "demo-sarclym-node-listener"]
    worker = docs["Deployment", "demo-sarclym-node-worker"]
    # Workers wherever the GPUs are: no affinity to the listener.
    assert "affinity" not in worker["spec"]["template"]["spec"]
    # Two listeners behind the one Service, rolled one at a time, spread over nodes, one kept.
    assert listener["spec"]["replicas"] == 2
    assert listener["spec"]["strategy"]["type"] == "RollingUpdate"
    assert listener["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    anti = listener["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (preferred,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = listener["spec"]["selector"]["matchLabels"]
    assert preferred["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    pdb = docs["PodDisruptionBudget", "demo-sarclym-node-listener"]
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    assert docs["Service", "demo-sarclym-node"]["spec"]["selector"] == selector
    # The URL in the ConfigMap has no password; every pod gets it from the Secret (libpq).
    text = docs["ConfigMap", "demo-sarclym-node-config"]["data"]["sarclym.yaml"]
    storage = yaml.safe_load(text)["storage"]
    assert storage["database_url"] == "postgresql://sarclym@db.example.org:5432/sarclym"
    assert storage["shared_by_serves"] is True  # listener replicas share the data folder
    # The queue in the state's database: no Redis pod, no queue_url (one service fewer).
    assert not [key for key in docs if "redis" in key[1]]
    assert yaml.safe_load(text)["service"]["queue_url"] is None
    asked = _by_kind(helm.render({**POSTGRESQL, "redis": {"enabled": True}}))
    assert ("Deployment", "demo-sarclym-node-redis") in asked
    asked_text = asked["ConfigMap", "demo-sarclym-node-config"]["data"]["sarclym.yaml"]
    assert yaml.safe_load(asked_text)["service"]["queue_url"] == (
        "redis://demo-sarclym-node-redis:6379/0"
    )
    file = tmp_path / "sarclym.yaml"
    file.write_text(_without_database_url(text))
    for deployment in (listener, worker):
        env = {e["name"]: e for e in _container(deployment)["env"]}
        assert env["PGPASSWORD"]["valueFrom"] == {
            "secretKeyRef": {"name": "sarclym-postgresql", "key": "password"}
        }
        assert env["PGSSLMODE"]["value"] == "verify-full"
        plain = {k: e["value"] for k, e in env.items() if "value" in e and k != "SARCLYM_CONFIG"}
        config = load_config(file, environ=plain)
        assert config.storage.shared_by_serves
        assert config.service.queue_url is None
        assert str(config.storage.data_dir) == "/data"
    # The data volume mounted by pods on several nodes: ReadWriteMany, class from values.
    rwx = {**POSTGRESQL, "persistence": {"storageClassName": "cephfs"}}
    pvc = _by_kind(helm.render(rwx))["PersistentVolumeClaim", "demo-sarclym-node-data"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["storageClassName"] == "cephfs"
    # Colocation can still be asked for with PostgreSQL.
    pinned = {**POSTGRESQL, "worker": {"colocateWithListener": True}}
    spec = _by_kind(helm.render(pinned))["Deployment", "demo-sarclym-node-worker"]["spec"]
    assert "podAffinity" in spec["template"]["spec"]["affinity"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"worker": {"colocateWithListener": False}}, "colocateWithListener: false needs"),
        ({"listener": {"replicas": 2}}, "listener.replicas: 2 needs postgresql.enabled"),
        ({"listener": {"replicas": 0}}, "listener.replicas: expected 1 or more"),
        ({"postgresql": {"enabled": True, "passwordSecret": {"name": "s"}}}, "postgresql.host"),
        ({"postgresql": {"enabled": True, "host": "db"}}, "postgresql.passwordSecret.name"),
        (
            {"postgresql": {**POSTGRESQL["postgresql"], "user": "a b"}},
            "postgresql.user: expected",
        ),
        (
            {**POSTGRESQL, "persistence": {"accessModes": ["ReadWriteOnce"]}},
            "need ReadWriteMany",
        ),
    ],
    ids=["sqlite-apart", "sqlite-replicas", "no-listener", "no-host", "no-secret", "user", "rwo"],
)
def test_helm_refuses_a_layout_that_cannot_work(
    helm: Renderer, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(Exception, match=re.escape(message)):
        helm.render(values)


def test_helm_worker_probes_follow_the_health_port(helm: Renderer) -> None:
    docs = _by_kind(helm.render({"worker": {"healthPort": 0}}))
    work = _container(docs["Deployment", "demo-sarclym-node-worker"])
    assert "livenessProbe" not in work
    assert "readinessProbe" not in work
    assert "ports" not in work
    text = docs["ConfigMap", "demo-sarclym-node-config"]["data"]["sarclym.yaml"]
    assert yaml.safe_load(text)["worker"]["health_port"] == 0


def test_helm_manifests_match_the_kubernetes_schemas(helm: Renderer) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.skip("kubernetes-validate is not installed (Kubernetes JSON schemas, 72 MB)")
    docs = helm.render()
    for doc in [*docs, *helm.render(POSTGRESQL)]:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    broken = json.loads(json.dumps(docs[0]))
    broken["metadata"]["nmae"] = "typo"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30.0", strict=True)
