"""The Helm chart, checked by real Helm (helm-python-sdk) and the Kubernetes schemas.

Every scenario (the defaults and each ``ci/*-values.yaml``) must pass ``helm lint --strict``,
render, validate object by object against the Kubernetes OpenAPI schemas
(``kubernetes-validate``), and produce a ConfigMap the sidecar's own ``check-config`` accepts
once the rendered ConfigMap and Secret are laid out where the Deployment mounts them. The values
schema must refuse what the chart cannot run (several replicas or RollingUpdate on SQLite, a
PodDisruptionBudget with both maxUnavailable and minAvailable, unknown keys); several replicas get
a PodDisruptionBudget and a per-node pod anti-affinity.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from jsonschema import Draft7Validator  # type: ignore[import-untyped]

from tests.support.binaries import require_binary
from tests.support.readers import write_users_file
from tests.support.settings import configuration_keys

REPO = Path(__file__).resolve().parent.parent
CHART_DIR = REPO / "helm" / "incident-sla-sidecar"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RULES_FILE = CHART_DIR / "files" / "prometheus" / "incident-sla-alerts.yaml"
DASHBOARD_FILE = CHART_DIR / "files" / "dashboards" / "incident-sla-sidecar.json"
RELEASE = "sla"
NAMESPACE = "monitoring"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas known.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.utils.latest_version())

# Where the image puts the built-in presets (Dockerfile: COPY rules/ ...).
PRESETS_DIR = "/etc/incident-sla-sidecar/rules"

# kubernetes-validate only knows built-in kinds. These are the parts of prometheus-operator's
# monitoring.coreos.com/v1 CRD schemas (ServiceMonitor, PrometheusRule) that the chart uses,
# closed with additionalProperties: false so a misspelt field fails here as it would in the cluster.
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "action": {"type": "string"},
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
    },
}
_SECRET_KEY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "key"],
    "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
}
_SECRET_OR_CONFIGMAP = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"secret": _SECRET_KEY, "configMap": _SECRET_KEY},
}
_TLS_CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "ca": _SECRET_OR_CONFIGMAP,
        "cert": _SECRET_OR_CONFIGMAP,
        "keySecret": _SECRET_KEY,
        "serverName": {"type": "string"},
        "insecureSkipVerify": {"type": "boolean"},
    },
}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "jobLabel": {"type": "string"},
                    "selector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "matchLabels": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            }
                        },
                    },
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "any": {"type": "boolean"},
                            "matchNames": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "scheme": {"enum": ["http", "https"]},
                                "tlsConfig": _TLS_CONFIG,
                                "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                "scrapeTimeout": {
                                    "type": "string",
                                    "pattern": "^[0-9]+(ms|s|m|h)$",
                                },
                                "relabelings": {"type": "array", "items": _RELABEL},
                                "metricRelabelings": {"type": "array", "items": _RELABEL},
                            },
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": {"type": "string"},
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["expr"],
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "record": {"type": "string"},
                                            "expr": {"type": ["string", "integer"]},
                                            "for": {"type": "string"},
                                            "labels": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            },
                                            "annotations": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


def load_values(path: Path) -> dict[str, Any]:
    """Read a values file."""
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(values, dict), path
    return values


SCENARIOS: list[tuple[str, dict[str, Any]]] = [("defaults", {})] + [
    (path.name, load_values(path)) for path in CI_VALUES
]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    """The chart as Helm loads it."""
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any]) -> dict[str, str]:
    """Render like ``helm install``: schema first, then the templates."""
    chart.validate_schema(values)
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in the rendered manifests (NOTES.txt is not a manifest)."""
    found: list[dict[str, Any]] = []
    for name, text in rendered.items():
        if name.endswith("NOTES.txt"):
            continue
        found.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return found


def one(objs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    """The single object of ``kind`` (whose name ends with ``name_suffix``)."""
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(matches) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in matches]}"
    return matches[0]


def kinds(objs: list[dict[str, Any]]) -> set[str]:
    """The kinds present."""
    return {o["kind"] for o in objs}


def test_app_version_is_the_package_version(chart: helm.Chart) -> None:
    """The default image tag (appVersion) is the version pyproject.toml builds."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert chart.metadata["appVersion"] == project["version"]
    assert chart.metadata["apiVersion"] == "v2"


def test_ci_scenarios_exist() -> None:
    """Every documented toggle has a ci/*-values.yaml scenario."""
    names = {path.name for path in CI_VALUES}
    assert {
        "kube-prometheus-stack-values.yaml",
        "postgresql-values.yaml",
        "postgresql-secret-values.yaml",
        "existing-secret-values.yaml",
        "pagerduty-values.yaml",
        "custom-rules-values.yaml",
        "schema-registry-values.yaml",
        "networkpolicy-values.yaml",
        "ephemeral-values.yaml",
        "ha-postgresql-values.yaml",
        "basic-auth-readers-values.yaml",
        "oauth2-proxy-values.yaml",
        "tls-values.yaml",
        "tls-server-only-values.yaml",
        "slack-values.yaml",
        "webhooks-values.yaml",
        "jira-values.yaml",
    } <= names


@pytest.mark.parametrize(("scenario", "values"), SCENARIOS, ids=[s for s, _ in SCENARIOS])
def test_lint_strict(scenario: str, values: dict[str, Any]) -> None:
    """``helm lint --strict`` finds no warning or error."""
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [], report
    assert serious == [], report


@pytest.mark.parametrize(("scenario", "values"), SCENARIOS, ids=[s for s, _ in SCENARIOS])
def test_objects_validate_against_kubernetes_schemas(
    chart: helm.Chart, scenario: str, values: dict[str, Any]
) -> None:
    """Every rendered object is valid for the oldest and newest supported Kubernetes."""
    objs = objects(render(chart, values))
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= kinds(objs)
    for obj in objs:
        crd_schema = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        if crd_schema is not None:
            Draft7Validator(crd_schema).validate(obj)
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]


def test_crd_subset_schemas_can_fail(chart: helm.Chart) -> None:
    """The checked-in CRD subsets reject a misspelt field."""
    objs = objects(render(chart, load_values(CHART_DIR / "ci/kube-prometheus-stack-values.yaml")))
    monitor = one(objs, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intreval"] = "30s"
    errors = list(
        Draft7Validator(CRD_SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")]).iter_errors(
            monitor
        )
    )
    assert errors


@functools.cache
def self_signed_pair() -> tuple[bytes, bytes]:
    """A self-signed certificate (its own CA) and its key, PEM, made once by ``openssl``."""
    with tempfile.TemporaryDirectory() as directory:
        command = (
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1"
            " -subj /CN=sla-incident-sla-sidecar.monitoring.svc -keyout tls.key -out tls.crt"
        )
        subprocess.run(
            [str(require_binary("openssl")), *command.split()],
            cwd=directory,
            capture_output=True,
            timeout=60,
            check=True,
        )
        return (Path(directory, "tls.crt").read_bytes(), Path(directory, "tls.key").read_bytes())


def lay_out_pod(objs: list[dict[str, Any]], root: Path) -> tuple[Path, dict[str, str]]:
    """Write what the Deployment mounts under ``root``; return its config path and environment.

    ConfigMap and Secret keys become files at their mount paths, the presets go where the
    Dockerfile copies them, and every absolute path in config.yaml is re-rooted under ``root``.
    An existing Secret (created outside the chart) gets placeholder files for the keys the
    configuration references, and a TLS Secret a real certificate and key (the sidecar loads them).
    """
    deployment = one(objs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objs}

    def rerooted(text: str) -> str:
        return re.sub(r"(?<![\w/])/(etc|var)/", lambda m: f"{root}/{m.group(1)}/", text)

    existing_secret_dirs: list[Path] = []
    for mount in container["volumeMounts"]:
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            config_map = by_name[("ConfigMap", volume["configMap"]["name"])]
            for key, text in config_map["data"].items():
                (target / key).write_text(rerooted(text), encoding="utf-8")
        elif mount["name"] == "users":
            continue  # the readers' web.config.file, written below from the config
        elif "secret" in volume:
            secret = by_name.get(("Secret", volume["secret"]["secretName"]))
            if secret is None:
                existing_secret_dirs.append(target)
                continue
            for key, encoded in secret["data"].items():
                (target / key).write_bytes(base64.b64decode(encoded))
        else:
            assert "persistentVolumeClaim" in volume or "emptyDir" in volume, volume
    shutil.copytree(REPO / "rules", root / PRESETS_DIR.lstrip("/"), dirs_exist_ok=True)

    args = container["args"]
    assert args[:2] == ["serve", "--config"], args
    config_path = root / args[2].lstrip("/")
    users_file = yaml.safe_load(config_path.read_text())["server"].get("web_config_file")
    if users_file is not None:
        write_users_file(Path(users_file))
    for directory in existing_secret_dirs:
        referenced = re.findall(rf"{re.escape(str(directory))}/([\w.-]+)", config_path.read_text())
        assert referenced, "an existing Secret is mounted but the config reads nothing from it"
        for key in referenced:
            if key.endswith((".crt", ".key")):
                cert, private_key = self_signed_pair()
                (directory / key).write_bytes(private_key if key.endswith(".key") else cert)
            else:
                (directory / key).write_text(f"placeholder-{key}\n", encoding="utf-8")

    env: dict[str, str] = {}
    for var in container.get("env", []):
        if var["name"] == "SIDECAR__STORE__URL":
            # Stands in for the Secret the URL comes from.
            env[var["name"]] = "postgresql://sidecar@postgresql:5432/sidecar"
    return config_path, env


@pytest.mark.parametrize(("scenario", "values"), SCENARIOS, ids=[s for s, _ in SCENARIOS])
def test_rendered_config_passes_check_config(
    chart: helm.Chart, scenario: str, values: dict[str, Any], tmp_path: Path
) -> None:
    """The sidecar accepts the configuration the pod would start with."""
    config_path, env = lay_out_pod(objects(render(chart, values)), tmp_path / "root")
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR__")}
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean_env, **env},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_check_config_layout_can_fail(chart: helm.Chart, tmp_path: Path) -> None:
    """A token file the Secret does not provide makes check-config fail (the check has teeth)."""
    objs = objects(render(chart, {}))
    one(objs, "Secret")["data"].pop("api-token")
    config_path, _ = lay_out_pod(objs, tmp_path / "root")
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "api_token_file" in result.stderr


INVALID_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("two replicas on the default SQLite store", {"replicaCount": 2}, "anyOf"),
    (
        "two replicas on an explicit SQLite store",
        {"replicaCount": 2, "config": {"store": {"url": "sqlite:////data/x.db"}}},
        "anyOf",
    ),
    ("unknown top-level key", {"replicas": 2}, "replicas"),
    ("unknown preset", {"rules": {"preset": "acme"}}, "preset"),
    ("rules.file is the chart's", {"config": {"rules": {"file": "/x.yaml"}}}, "config"),
    ("secret in the ConfigMap", {"config": {"server": {"webhook_token": "t"}}}, "webhook_token"),
    ("unsupported store", {"config": {"store": {"url": "mysql://db/x"}}}, "url"),
    ("port out of range", {"service": {"port": 70000}}, "port"),
    ("bad pull policy", {"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ("bad volume size", {"persistence": {"size": "lots"}}, "size"),
    ("bad incident key", {"config": {"incidents": {"key": "fingerprint"}}}, "key"),
    ("replica count as a string", {"replicaCount": "1"}, "replicaCount"),
    (
        "both maxUnavailable and minAvailable",
        {"podDisruptionBudget": {"maxUnavailable": 1, "minAvailable": 2}},
        "podDisruptionBudget",
    ),
    (
        "PDB that blocks every drain",
        {"podDisruptionBudget": {"maxUnavailable": 0}},
        "maxUnavailable",
    ),
    ("bad PDB percentage", {"podDisruptionBudget": {"minAvailable": "half"}}, "minAvailable"),
    ("bad anti-affinity preset", {"podAntiAffinityPreset": "medium"}, "podAntiAffinityPreset"),
    ("RollingUpdate on SQLite", {"strategy": {"type": "RollingUpdate"}}, "anyOf"),
    ("unknown strategy type", {"strategy": {"type": "BlueGreen"}}, "type"),
    ("bad silence poll interval", {"config": {"alertmanager": {"poll_interval": "soon"}}}, "poll"),
]


@pytest.mark.parametrize(
    ("case", "values", "mentions"), INVALID_VALUES, ids=[c for c, _, _ in INVALID_VALUES]
)
def test_schema_refuses_invalid_values(
    chart: helm.Chart, case: str, values: dict[str, Any], mentions: str
) -> None:
    """values.schema.json refuses values the chart cannot run, as install and lint do."""
    with pytest.raises(helm.HelmValuesError, match=mentions):
        chart.validate_schema(values)
    report = helm.lint(CHART_DIR, values, strict=True)
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"]), report


def test_invalid_values_file_is_refused(chart: helm.Chart, tmp_path: Path) -> None:
    """A values file (read by Helm's own parser, as ``-f`` does) with two SQLite replicas fails."""
    values_file = tmp_path / "two-replicas-values.yaml"
    values_file.write_text(
        "# Two replicas, but the store is still the embedded SQLite database.\n"
        "replicaCount: 2\n"
        "config:\n"
        "  store:\n"
        "    url: sqlite:////var/lib/incident-sla-sidecar/sidecar.db\n",
        encoding="utf-8",
    )
    values = helm.values_from_yaml(values_file.read_text(encoding="utf-8"))
    with pytest.raises(helm.HelmValuesError, match="postgres"):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 3, "config": {"store": {"url": "postgresql://s@db/s"}}},
        {"replicaCount": 2, "storeUrlSecret": {"name": "sidecar-store"}},
        {"replicaCount": 1},
        {"replicaCount": 0},
    ],
    ids=["postgres-url", "url-from-secret", "one", "scaled-to-zero"],
)
def test_schema_accepts_replicas_with_postgres(chart: helm.Chart, values: dict[str, Any]) -> None:
    """Several replicas are fine once the store is PostgreSQL."""
    chart.validate_schema(values)


def test_render_applies_the_schema(chart: helm.Chart) -> None:
    """Rendering (as install does) refuses values the schema refuses."""
    with pytest.raises(helm.HelmValuesError, match="anyOf"):
        chart.render({"replicaCount": 2}, name=RELEASE, namespace=NAMESPACE)


def test_template_guards_replicas_even_without_schema(tmp_path: Path) -> None:
    """Without the schema (``--skip-schema-validation``) the template still refuses it."""
    copy = tmp_path / "chart"
    shutil.copytree(CHART_DIR, copy)
    (copy / "values.schema.json").unlink()
    with helm.Chart.load(copy) as unchecked:
        assert unchecked.schema is None
        with pytest.raises(helm.HelmRenderError, match="PostgreSQL"):
            unchecked.render({"replicaCount": 2}, name=RELEASE, namespace=NAMESPACE)
        unchecked.render({"replicaCount": 2, "storeUrlSecret": {"name": "s"}}, name=RELEASE)


def test_template_guards_ha_values_even_without_schema(tmp_path: Path) -> None:
    """Without the schema the templates still refuse what the schema refuses for HA values."""
    copy = tmp_path / "chart"
    shutil.copytree(CHART_DIR, copy)
    (copy / "values.schema.json").unlink()
    postgres = {"replicaCount": 2, "storeUrlSecret": {"name": "s"}}
    with helm.Chart.load(copy) as unchecked:
        with pytest.raises(helm.HelmRenderError, match="RollingUpdate needs a PostgreSQL"):
            unchecked.render({"strategy": {"type": "RollingUpdate"}}, name=RELEASE)
        with pytest.raises(helm.HelmRenderError, match="soft, hard or none"):
            unchecked.render({**postgres, "podAntiAffinityPreset": "medium"}, name=RELEASE)
        both = {"podDisruptionBudget": {"maxUnavailable": 1, "minAvailable": 1}}
        with pytest.raises(helm.HelmRenderError, match="not both"):
            unchecked.render({**postgres, **both}, name=RELEASE)
        unchecked.render({"strategy": {"type": "Recreate"}}, name=RELEASE)


def test_defaults_single_sqlite_replica_hardened(chart: helm.Chart) -> None:
    """Defaults: one Recreate replica on a kept PVC, restricted security, probes, checksums."""
    objs = objects(render(chart, {}))
    assert kinds(objs) == {
        "Deployment",
        "Service",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
    }
    deployment = one(objs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 9095, "protocol": "TCP"}]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/var/lib/incident-sla-sidecar"] == "data"
    assert mounts["/tmp"] == "tmp"
    volumes = {v["name"]: v for v in pod["volumes"]}
    pvc = one(objs, "PersistentVolumeClaim")
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    annotations = spec["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/secret"])
    config = yaml.safe_load(one(objs, "ConfigMap")["data"]["config.yaml"])
    assert config["store"]["url"] == "sqlite:////var/lib/incident-sla-sidecar/sidecar.db"
    assert config["rules"]["file"] == f"{PRESETS_DIR}/llm-marketplace.yaml"
    assert config["server"]["listen"] == "0.0.0.0:9095"
    secret = one(objs, "Secret")
    assert set(secret["data"]) == {"webhook-token", "api-token"}
    assert all(len(base64.b64decode(v)) >= 32 for v in secret["data"].values())


def test_config_change_rolls_pods(chart: helm.Chart) -> None:
    """The checksum/config annotation changes when the configuration does."""

    def checksum(values: dict[str, Any]) -> str:
        deployment = one(objects(render(chart, values)), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"config": {"logging": {"level": "debug"}}})
    assert checksum({}) != checksum({"rules": {"preset": "schema-registry"}})


def test_postgresql_rolls_without_volume(chart: helm.Chart) -> None:
    """PostgreSQL: several replicas, RollingUpdate, no PVC, data on an emptyDir."""
    objs = objects(render(chart, load_values(CHART_DIR / "ci/postgresql-values.yaml")))
    assert "PersistentVolumeClaim" not in kinds(objs)
    spec = one(objs, "Deployment")["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}


def test_store_url_from_secret(chart: helm.Chart) -> None:
    """storeUrlSecret: the URL comes from the Secret by env, not from the ConfigMap."""
    objs = objects(render(chart, load_values(CHART_DIR / "ci/postgresql-secret-values.yaml")))
    container = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {
        "name": "SIDECAR__STORE__URL",
        "valueFrom": {"secretKeyRef": {"name": "sidecar-store", "key": "url"}},
    } in container["env"]
    config = yaml.safe_load(one(objs, "ConfigMap")["data"]["config.yaml"])
    assert "url" not in config["store"]
    assert "PersistentVolumeClaim" not in kinds(objs)


def test_ha_postgresql_has_budget_anti_affinity_and_rolling_update(chart: helm.Chart) -> None:
    """HA scenario: a PDB over the Deployment's pods, soft anti-affinity per node, RollingUpdate."""
    objs = objects(render(chart, load_values(CHART_DIR / "ci/ha-postgresql-values.yaml")))
    deployment = one(objs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": spec["selector"]}
    pod_labels = spec["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    assert spec["template"]["spec"]["affinity"] == {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": spec["selector"],
                    },
                }
            ]
        }
    }
    assert "PersistentVolumeClaim" not in kinds(objs)


def test_single_replica_has_no_budget_and_recreates(chart: helm.Chart) -> None:
    """One SQLite replica: no PDB (it could only block drains), no anti-affinity, Recreate."""
    objs = objects(render(chart, {}))
    assert "PodDisruptionBudget" not in kinds(objs)
    spec = one(objs, "Deployment")["spec"]
    assert spec["strategy"] == {"type": "Recreate"}
    assert "affinity" not in spec["template"]["spec"]


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        ({}, {"maxUnavailable": 1}),
        ({"enabled": None}, {"maxUnavailable": 1}),
        ({"maxUnavailable": "50%"}, {"maxUnavailable": "50%"}),
        ({"minAvailable": 1}, {"minAvailable": 1}),
        ({"maxUnavailable": None, "minAvailable": "50%"}, {"minAvailable": "50%"}),
        ({"enabled": False}, None),
    ],
    ids=["automatic", "null-is-automatic", "max-percent", "min", "min-percent", "off"],
)
def test_budget_follows_replicas_and_values(
    chart: helm.Chart, budget: dict[str, Any], expected: dict[str, Any] | None
) -> None:
    """Several replicas get a PDB unless disabled; minAvailable replaces the maxUnavailable: 1."""
    values = {"replicaCount": 2, "storeUrlSecret": {"name": "s"}, "podDisruptionBudget": budget}
    objs = objects(render(chart, values))
    if expected is None:
        assert "PodDisruptionBudget" not in kinds(objs)
        return
    pdb = one(objs, "PodDisruptionBudget")
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(pdb, version, strict=True)
    spec = dict(pdb["spec"])
    assert spec.pop("selector") == one(objs, "Deployment")["spec"]["selector"]
    assert spec == expected


def test_budget_can_be_forced_on_one_replica(chart: helm.Chart) -> None:
    """enabled: true renders the PDB even for a single replica."""
    objs = objects(render(chart, {"podDisruptionBudget": {"enabled": True}}))
    assert one(objs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


NODE_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ops"]}]}
            ]
        }
    }
}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"podAntiAffinityPreset": "hard"},
            {
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {
                                "matchLabels": {
                                    "app.kubernetes.io/name": "incident-sla-sidecar",
                                    "app.kubernetes.io/instance": RELEASE,
                                }
                            },
                        }
                    ]
                }
            },
        ),
        ({"podAntiAffinityPreset": "none"}, None),
        (
            {"affinity": NODE_AFFINITY, "podAntiAffinityPreset": "hard"},
            NODE_AFFINITY,
        ),
    ],
    ids=["hard", "none", "own-affinity-wins"],
)
def test_anti_affinity_preset(
    chart: helm.Chart, values: dict[str, Any], expected: dict[str, Any] | None
) -> None:
    """The preset picks required, no or (with `affinity` set) the user's own affinity."""
    values = {"replicaCount": 3, "config": {"store": {"url": "postgresql://s@db/s"}}, **values}
    chart.validate_schema(values)
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    deployment = one(objects(rendered), "Deployment")
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(deployment, version, strict=True)
    assert deployment["spec"]["template"]["spec"].get("affinity") == expected


def test_existing_secret_is_mounted_not_created(chart: helm.Chart) -> None:
    """existingSecret: no Secret rendered; the named one is mounted with every documented key."""
    objs = objects(render(chart, load_values(CHART_DIR / "ci/existing-secret-values.yaml")))
    assert "Secret" not in kinds(objs)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "sidecar-credentials"
    config = yaml.safe_load(one(objs, "ConfigMap")["data"]["config.yaml"])
    files = {
        Path(v).name
        for section in ("server", "pagerduty")
        for k, v in config[section].items()
        if k.endswith("_file")
    }
    assert files == {
        "webhook-token",
        "api-token",
        "pagerduty-routing-key",
        "pagerduty-api-token",
        "pagerduty-webhook-secret",
    }
    documented = (CHART_DIR / "values.yaml").read_text(encoding="utf-8")
    assert all(f"`{name}`" in documented for name in files)


def test_pagerduty_requires_keys_without_existing_secret(chart: helm.Chart) -> None:
    """PagerDuty enabled without keys or an existing Secret is refused with a clear message."""
    with pytest.raises(helm.HelmRenderError, match=r"pagerduty\.routingKey is required"):
        chart.render({"pagerduty": {"enabled": True}}, name=RELEASE, namespace=NAMESPACE)


def test_per_team_and_tier_routing_keys(chart: helm.Chart) -> None:
    """Team and tier routing keys are stored in the Secret and referenced as files."""
    objs = objects(render(chart, load_values(CHART_DIR / "ci/pagerduty-values.yaml")))
    secret = one(objs, "Secret")["data"]
    assert base64.b64decode(secret["pagerduty-team-search"]) == b"placeholder-search-routing-key"
    assert {"pagerduty-tier-vp-engineering", "pagerduty-tier-team-lead"} <= set(secret)
    pagerduty = yaml.safe_load(one(objs, "ConfigMap")["data"]["config.yaml"])["pagerduty"]
    secrets_dir = "/etc/incident-sla-sidecar/secrets"
    assert pagerduty["team_routing_keys"] == {
        "search": {"file": f"{secrets_dir}/pagerduty-team-search"}
    }
    assert pagerduty["tier_routing_keys"] == {
        tier: {"file": f"{secrets_dir}/pagerduty-tier-{tier}"}
        for tier in ("vp-engineering", "engineering-manager", "team-lead", "change-manager")
    }
    assert pagerduty["timeout"] == "5s"
    values = load_values(CHART_DIR / "ci/pagerduty-values.yaml")
    values["pagerduty"]["teamRoutingKeys"]["search"] = ""
    with pytest.raises(helm.HelmRenderError, match=r"teamRoutingKeys\.search is empty"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_custom_rules_go_next_to_the_config(chart: helm.Chart) -> None:
    """rules.custom is written as rules.yaml beside config.yaml and replaces the preset."""
    values = load_values(CHART_DIR / "ci/custom-rules-values.yaml")
    data = one(objects(render(chart, values)), "ConfigMap")["data"]
    assert yaml.safe_load(data["config.yaml"])["rules"] == {"file": "rules.yaml"}
    assert yaml.safe_load(data["rules.yaml"]) == values["rules"]["custom"]


def test_silence_settings_reach_the_config(chart: helm.Chart) -> None:
    """The alertmanager section passes through; an empty comment prefix means every silence."""
    values = load_values(CHART_DIR / "ci/kube-prometheus-stack-values.yaml")
    data = one(objects(render(chart, values)), "ConfigMap", "-sidecar")["data"]
    assert yaml.safe_load(data["config.yaml"])["alertmanager"] == {
        "url": "http://kube-prometheus-stack-alertmanager:9093",
        "silences_acknowledge": True,
        "silence_comment_prefix": "ack:",
        "poll_interval": "30s",
    }
    plain = {"config": {"alertmanager": {"url": "http://alertmanager:9093"}}}
    data = one(objects(render(chart, plain)), "ConfigMap")["data"]
    assert yaml.safe_load(data["config.yaml"])["alertmanager"] == {
        "url": "http://alertmanager:9093",
        "silences_acknowledge": True,
        "poll_interval": "15s",
    }
    data = one(objects(render(chart, {})), "ConfigMap")["data"]
    assert "alertmanager" not in yaml.safe_load(data["config.yaml"])


def test_presets_offered_exist_in_the_repository(chart: helm.Chart) -> None:
    """Every preset the schema offers is a rules file the image ships."""
    schema = chart.schema
    assert schema is not None
    presets = schema["properties"]["rules"]["properties"]["preset"]["enum"]
    assert sorted(presets) == sorted(p.stem for p in (REPO / "rules").glob("*.yaml"))


def test_kube_prometheus_stack_objects(chart: helm.Chart) -> None:
    """ServiceMonitor, PrometheusRule and dashboard follow kube-prometheus-stack's conventions."""
    objs = objects(render(chart, load_values(CHART_DIR / "ci/kube-prometheus-stack-values.yaml")))
    monitor = one(objs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = one(objs, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert {
        "action": "replace",
        "targetLabel": "job",
        "replacement": "incident-sla-sidecar",
    } in endpoint["relabelings"]

    rule = one(objs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    dashboard = one(objs, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_alert_rules_and_dashboard_are_single_sourced(chart: helm.Chart) -> None:
    """The chart ships the canonical files unchanged; the repository paths link to them."""
    objs = objects(render(chart, load_values(CHART_DIR / "ci/kube-prometheus-stack-values.yaml")))
    canonical_rules = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    shipped = one(objs, "PrometheusRule")["spec"]
    # Only the runbook links' base moves to this release's sidecar (see the runbook tests).
    for spec in (shipped, canonical_rules):
        for group in spec["groups"]:
            for rule in group["rules"]:
                link = rule.get("annotations", {}).pop("runbook_url", None)
                assert link is None or link.endswith(f"/runbooks/{rule['alert']}"), link
    assert shipped == canonical_rules
    dashboard = one(objs, "ConfigMap", "-dashboard")
    assert json.loads(dashboard["data"]["incident-sla-sidecar.json"]) == json.loads(
        DASHBOARD_FILE.read_text(encoding="utf-8")
    )
    # What Helm loaded is the file itself (no symlink inside the chart to follow or lose).
    loaded = {f["name"] for f in chart.files}
    assert {
        "files/prometheus/incident-sla-alerts.yaml",
        "files/dashboards/incident-sla-sidecar.json",
    } <= loaded
    assert not any(p.is_symlink() for p in CHART_DIR.rglob("*"))
    # The repository's conventional paths are relative links into the chart.
    for link, target in [
        (REPO / "rules/prometheus/incident-sla-alerts.yaml", RULES_FILE),
        (REPO / "dashboards/incident-sla-sidecar.json", DASHBOARD_FILE),
    ]:
        assert link.is_symlink(), link
        assert not Path(os.readlink(link)).is_absolute(), link
        assert link.resolve() == target.resolve()


def test_prometheus_rule_options(chart: helm.Chart) -> None:
    """additionalRuleLabels reach every alert; runbookBaseUrl re-bases every runbook link."""
    values = load_values(CHART_DIR / "ci/kube-prometheus-stack-values.yaml")
    values["prometheusRule"]["additionalRuleLabels"] = {"route": "people"}
    values["prometheusRule"]["runbookBaseUrl"] = "https://wiki.example.org/incident-sla/"
    rule = one(objects(render(chart, values)), "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert alerts
    for alert in alerts:
        assert alert["labels"]["route"] == "people"
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["runbook_url"] == (
            f"https://wiki.example.org/incident-sla/{alert['alert']}"
        )


@pytest.mark.parametrize(
    ("values", "base"),
    [
        ({}, f"http://{RELEASE}-incident-sla-sidecar.{NAMESPACE}.svc:9095/runbooks"),
        (
            {"config": {"server": {"external_url": "https://incidents.example.com/"}}},
            "https://incidents.example.com/runbooks",
        ),
        (
            {"tls": {"enabled": True, "secretName": "sidecar-tls"}, "service": {"port": 8443}},
            f"https://{RELEASE}-incident-sla-sidecar.{NAMESPACE}.svc:8443/runbooks",
        ),
    ],
    ids=["service", "external-url", "tls"],
)
def test_runbook_links_point_at_the_sidecar(
    chart: helm.Chart, values: dict[str, Any], base: str
) -> None:
    """Without an override, every runbook_url is this release's own GET /runbooks/<alert>."""
    values = {**values, "prometheusRule": {"enabled": True}}
    rule = one(objects(render(chart, values)), "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    links = {a["annotations"]["runbook_url"] for a in alerts}
    assert links == {f"{base}/{a['alert']}" for a in alerts}


def test_prometheus_rule_passes_promtool(chart: helm.Chart, tmp_path: Path) -> None:
    """The PrometheusRule's spec is a rule file Prometheus loads."""
    values = load_values(CHART_DIR / "ci/kube-prometheus-stack-values.yaml")
    values["prometheusRule"]["additionalRuleLabels"] = {"route": "people"}
    spec = one(objects(render(chart, values)), "PrometheusRule")["spec"]
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(yaml.safe_dump(spec), encoding="utf-8")
    promtool = require_binary("promtool")
    result = subprocess.run(
        [str(promtool), "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_network_policy_admits_only_listed_peers(chart: helm.Chart) -> None:
    """The NetworkPolicy selects the pods and admits the listed peers on the HTTP port."""
    values = load_values(CHART_DIR / "ci/networkpolicy-values.yaml")
    objs = objects(render(chart, values))
    policy = one(objs, "NetworkPolicy")
    pod_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["ingress"] == [
        {
            "ports": [{"port": "http", "protocol": "TCP"}],
            "from": values["networkPolicy"]["ingressFrom"],
        }
    ]


def _schema_node(schema: dict[str, Any], path: list[str]) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for key in path:
        if node is None or key not in node.get("properties", {}):
            return None
        node = node["properties"][key]
    return node


def test_values_yaml_documents_every_key(chart: helm.Chart) -> None:
    """values.yaml points at its schema and comments every key the schema declares."""
    text = (CHART_DIR / "values.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "# yaml-language-server: $schema=values.schema.json"
    schema = chart.schema
    assert schema is not None
    stack: list[tuple[int, str]] = []
    undocumented: list[str] = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z_][\w-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [key for _, key in stack] + [match.group(2)]
        stack.append((indent, match.group(2)))
        if _schema_node(schema, path[:-1]) is None or _schema_node(schema, path) is None:
            continue  # inside a free-form Kubernetes object (securityContext, probes ...)
        previous = lines[number - 1].strip() if number else ""
        if not previous.startswith("#"):
            undocumented.append(".".join(path))
    assert undocumented == []


def test_values_schema_describes_every_property(chart: helm.Chart) -> None:
    """values.schema.json is draft-07, and every declared property has a description."""
    schema = chart.schema
    assert schema is not None
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    Draft7Validator.check_schema(schema)
    missing: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for key, child in node.get("properties", {}).items():
            if "description" not in child and path.count(".") < 10:
                missing.append(f"{path}{key}")
            walk(child, f"{path}{key}.")

    walk(schema, "")
    assert missing == []
    # Every default value validates, every value the schema declares exists in values.yaml.
    defaults = load_values(CHART_DIR / "values.yaml")
    Draft7Validator(schema).validate(defaults)
    assert set(schema["properties"]) - {"global"} == set(defaults)


def _notes(chart: helm.Chart, values: dict[str, Any]) -> str:
    rendered = render(chart, values)
    return next(text for name, text in rendered.items() if name.endswith("NOTES.txt"))


def test_notes_alertmanager_examples_are_valid(chart: helm.Chart, tmp_path: Path) -> None:
    """NOTES.txt's AlertmanagerConfig parses; its plain receiver passes ``amtool check-config``."""
    notes = _notes(chart, {})
    url = f"http://{RELEASE}-incident-sla-sidecar.{NAMESPACE}.svc:9095/webhook/alertmanager"
    blocks = notes.split("\n---\n")
    amc = yaml.safe_load(blocks[1])
    assert amc["kind"] == "AlertmanagerConfig"
    webhook = amc["spec"]["receivers"][0]["webhookConfigs"][0]
    assert webhook["url"] == url
    assert webhook["httpConfig"]["authorization"]["credentials"] == {
        "name": f"{RELEASE}-incident-sla-sidecar",
        "key": "webhook-token",
    }

    plain_text = notes[notes.index("\nroute:\n") :]
    plain_text = plain_text.split("\n\n")[0]
    plain = yaml.safe_load(plain_text)
    token = tmp_path / "webhook-token"
    token.write_text("placeholder\n", encoding="utf-8")
    http_config = plain["receivers"][0]["webhook_configs"][0]["http_config"]
    assert http_config["authorization"]["type"] == "Bearer"
    http_config["authorization"]["credentials_file"] = str(token)
    plain["route"]["receiver"] = "default"
    plain["receivers"].append({"name": "default"})
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(plain), encoding="utf-8")
    amtool = require_binary("amtool")
    result = subprocess.run(
        [str(amtool), "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert plain["receivers"][0]["webhook_configs"][0]["url"] == url


def test_notes_without_auth_omit_credentials(chart: helm.Chart) -> None:
    """With authentication disabled, NOTES.txt does not tell users to send a token."""
    notes = _notes(chart, {"config": {"server": {"insecure_disable_auth": True}}})
    assert "authorization" not in notes
    assert "webhook-token" not in notes


def test_readers_users_secret_and_proxy_header_reach_the_config(chart: helm.Chart) -> None:
    """Basic-auth users come from a mounted Secret; a proxy's user header is trusted only if set."""
    objs = objects(render(chart, load_values(CHART_DIR / "ci/basic-auth-readers-values.yaml")))
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["users"]["secret"]["secretName"] == "incident-sla-sidecar-users"
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    server = yaml.safe_load(one(objs, "ConfigMap")["data"]["config.yaml"])["server"]
    assert server["web_config_file"] == f"{mounts['users']}/web-config.yml"
    assert "trusted_user_header" not in server
    objs = objects(render(chart, load_values(CHART_DIR / "ci/oauth2-proxy-values.yaml")))
    server = yaml.safe_load(one(objs, "ConfigMap")["data"]["config.yaml"])["server"]
    assert server["trusted_user_header"] == "X-Forwarded-User"
    assert "web_config_file" not in server
    assert "NetworkPolicy" in kinds(objs)
    defaults = yaml.safe_load(one(objects(render(chart, {})), "ConfigMap")["data"]["config.yaml"])
    assert not {"trusted_user_header", "web_config_file"} & set(defaults["server"])


def _tls_pod(chart: helm.Chart, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    objs = objects(render(chart, values))
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    config = yaml.safe_load(one(objs, "ConfigMap")["data"]["config.yaml"])
    return pod, config


def test_tls_mounts_secrets_as_directories_and_names_the_files(chart: helm.Chart) -> None:
    """TLS files come from whole-Secret mounts (rotations reach the pod), named in server.tls_*."""
    pod, config = _tls_pod(chart, load_values(CHART_DIR / "ci/tls-values.yaml"))
    container = pod["containers"][0]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert all("subPath" not in m for m in container["volumeMounts"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "sidecar-tls"
    assert volumes["tls-client-ca"]["secret"]["secretName"] == "sidecar-client-ca"
    tls_dir, ca_dir = mounts["tls"]["mountPath"], mounts["tls-client-ca"]["mountPath"]
    assert config["server"]["tls_cert_file"] == f"{tls_dir}/tls.crt"
    assert config["server"]["tls_key_file"] == f"{tls_dir}/tls.key"
    assert config["server"]["tls_client_ca_file"] == f"{ca_dir}/ca.crt"
    # The kubelet has no client certificate: with mTLS the probes check TCP only.
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["tcpSocket"] == {"port": "http"}
        assert "httpGet" not in container[probe]


def test_tls_without_client_auth_probes_over_https(chart: helm.Chart) -> None:
    """Server-only TLS: HTTPS probes, no client CA, and no TLS at all by default."""
    pod, config = _tls_pod(chart, load_values(CHART_DIR / "ci/tls-server-only-values.yaml"))
    container = pod["containers"][0]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    assert "tls_client_ca_file" not in config["server"]
    assert "tls-client-ca" not in {v["name"] for v in pod["volumes"]}
    pod, config = _tls_pod(chart, {})
    assert not any(key.startswith("tls_") for key in config["server"])
    assert "scheme" not in pod["containers"][0]["livenessProbe"]["httpGet"]


def test_tls_needs_a_secret(chart: helm.Chart) -> None:
    """tls.enabled without tls.secretName is refused, naming the value."""
    values = {"tls": {"enabled": True}}
    with pytest.raises(helm.HelmError):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmError, match=r"tls/secretName"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_service_monitor_scrapes_over_https(chart: helm.Chart) -> None:
    """With TLS the ServiceMonitor scrapes https: its own tlsConfig, else the Secret's ca.crt."""
    values = load_values(CHART_DIR / "ci/tls-values.yaml")
    endpoint = one(objects(render(chart, values)), "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == values["serviceMonitor"]["tlsConfig"]
    values = load_values(CHART_DIR / "ci/tls-server-only-values.yaml")
    endpoint = one(objects(render(chart, values)), "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": "sidecar-tls", "key": "ca.crt"}},
        "serverName": f"{RELEASE}-incident-sla-sidecar.{NAMESPACE}.svc",
    }
    plain = {"serviceMonitor": {"enabled": True}}
    endpoint = one(objects(render(chart, plain)), "ServiceMonitor")["spec"]["endpoints"][0]
    assert "scheme" not in endpoint and "tlsConfig" not in endpoint


# Configuration keys the chart sets from values of its own, not from `config.<section>.<key>`.
CHART_MANAGED = {
    "server.listen": "service.port",
    "server.webhook_token": "secrets.webhookToken",
    "server.webhook_token_file": "secrets.webhookToken",
    "server.api_token": "secrets.apiToken",
    "server.api_token_file": "secrets.apiToken",
    "server.tls_cert_file": "tls.certKey",
    "server.tls_key_file": "tls.keyKey",
    "server.tls_client_ca_file": "tls.clientCaKey",
    "server.web_config_file": "readers.usersSecret",
    "server.trusted_user_header": "readers.trustedUserHeader",
    "rules.file": "rules.preset",
    "pagerduty.events_url": "pagerduty.eventsUrl",
    "pagerduty.api_url": "pagerduty.apiUrl",
    "pagerduty.api_token": "pagerduty.apiToken",
    "pagerduty.api_token_file": "pagerduty.apiToken",
    "pagerduty.webhook_secret": "pagerduty.webhookSecret",
    "pagerduty.webhook_secret_file": "pagerduty.webhookSecret",
    "pagerduty.routing_key": "pagerduty.routingKey",
    "pagerduty.routing_key_file": "pagerduty.routingKey",
    "pagerduty.team_routing_keys": "pagerduty.teamRoutingKeys",
    "pagerduty.tier_routing_keys": "pagerduty.tierRoutingKeys",
    "slack.token": "slack.token",
    "slack.token_file": "slack.token",
    "slack.api_url": "slack.apiUrl",
    "slack.channels.teams": "slack.channels.teams",
    "slack.channels.severities": "slack.channels.severities",
    "slack.channels.default": "slack.channels.default",
    "slack.channels.stakeholders": "slack.channels.stakeholders",
    "slack.channels.stakeholder_severities": "slack.channels.stakeholderSeverities",
    "slack.users": "slack.users",
    "webhooks": "webhooks.endpoints",
    "jira.url": "jira.url",
    "jira.email": "jira.email",
    "jira.api_token": "jira.apiToken",
    "jira.api_token_file": "jira.apiToken",
    "jira.project": "jira.project",
    "jira.issue_type": "jira.issueType",
}
#: Sections whose other keys are chart values under ``<section>.settings``.
SETTINGS_SECTIONS = ("pagerduty", "slack", "jira")


def test_chart_exposes_every_configuration_key(chart: helm.Chart) -> None:
    """Each key of the configuration file has a chart value: its own, or config.<section>.<key>.

    A key added to sidecar/config/settings.py without a value in values.schema.json (and, for
    config.*, a documented default in values.yaml) fails here.
    """
    schema = chart.schema
    assert schema is not None
    defaults = load_values(CHART_DIR / "values.yaml")
    missing = []
    for key in configuration_keys():
        section, _, rest = key.partition(".")
        if key in CHART_MANAGED:
            path = CHART_MANAGED[key].split(".")
        elif section in SETTINGS_SECTIONS:
            path = [section, "settings", *rest.split(".")]
        else:
            path = ["config", *key.split(".")]
        if _schema_node(schema, path) is None:
            missing.append(f"{key}: no {'.'.join(path)} in values.schema.json")
            continue
        node: Any = defaults
        for part in path[:-1] if path[0] in SETTINGS_SECTIONS and path[1] == "settings" else path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None and path[0] == "config":
            missing.append(f"{key}: no default for {'.'.join(path)} in values.yaml")
    assert missing == []
    assert {"alertmanager.silence_comment_prefix", "alertmanager.poll_interval"} <= set(
        configuration_keys()
    )


def test_artifact_hub_annotations(chart: helm.Chart) -> None:
    """links, images (the appVersion image) and changes parse as Artifact Hub expects."""
    annotations = chart.metadata["annotations"]
    links = yaml.safe_load(annotations["artifacthub.io/links"])
    assert links and all(set(link) == {"name", "url"} for link in links)
    assert all(link["url"].startswith("https://") for link in links)
    images = yaml.safe_load(annotations["artifacthub.io/images"])
    repository = load_values(CHART_DIR / "values.yaml")["image"]["repository"]
    assert [i["image"] for i in images] == [f"{repository}:{chart.metadata['appVersion']}"]
    changes = yaml.safe_load(annotations["artifacthub.io/changes"])
    kinds_allowed = {"added", "changed", "deprecated", "removed", "fixed", "security"}
    assert changes and all(c["kind"] in kinds_allowed and c["description"] for c in changes)


def test_chart_packages_and_the_archive_renders(tmp_path: Path) -> None:
    """``helm package`` makes an archive that loads and renders like the directory."""
    archive = Path(helm.package(CHART_DIR, destination=tmp_path))
    assert archive.name == "incident-sla-sidecar-0.1.0.tgz" and archive.is_file()
    with helm.Chart.load_archive(archive.read_bytes()) as packaged:
        names = {f["name"] for f in packaged.files}
        assert "files/prometheus/incident-sla-alerts.yaml" in names
        assert packaged.metadata["annotations"]["artifacthub.io/images"]
        values = load_values(CHART_DIR / "ci/tls-values.yaml")
        assert "PrometheusRule" in kinds(objects(render(packaged, values)))


def test_notes_with_tls_give_alertmanager_https_and_the_ca(chart: helm.Chart) -> None:
    """With TLS, NOTES.txt's receivers use https and trust the Secret's CA (and a client cert)."""
    notes = _notes(chart, load_values(CHART_DIR / "ci/tls-values.yaml"))
    amc = yaml.safe_load(notes.split("\n---\n")[1])
    webhook = amc["spec"]["receivers"][0]["webhookConfigs"][0]
    assert webhook["url"].startswith("https://")
    tls_config = webhook["httpConfig"]["tlsConfig"]
    assert tls_config["ca"] == {"secret": {"name": "sidecar-tls", "key": "ca.crt"}}
    assert {"cert", "keySecret"} <= set(tls_config)
    plain = yaml.safe_load(notes[notes.index("\nroute:\n") :].split("\n\n")[0])
    http_config = plain["receivers"][0]["webhook_configs"][0]["http_config"]
    assert http_config["tls_config"]["ca_file"].endswith("/sidecar-tls/ca.crt")
    assert "https://" not in _notes(chart, {})


@pytest.mark.parametrize(
    ("scenario", "section", "secret_keys"),
    [
        ("slack", "slack", {"slack-token": b"xoxb-placeholder-token"}),
        ("jira", "jira", {"jira-api-token": b"placeholder-jira-token"}),
        (
            "webhooks",
            "webhooks",
            {
                "webhook-status-page": b"placeholder-status-page-secret",
                "webhook-chatops": b"placeholder-chatops-secret",
            },
        ),
    ],
)
def test_notification_secrets_are_stored_and_read_as_files(
    chart: helm.Chart, scenario: str, section: str, secret_keys: dict[str, bytes]
) -> None:
    """Slack's token, Jira's token and each webhook's secret go to the Secret, never the config."""
    objs = objects(render(chart, load_values(CHART_DIR / f"ci/{scenario}-values.yaml")))
    secret = one(objs, "Secret")["data"]
    for key, value in secret_keys.items():
        assert base64.b64decode(secret[key]) == value
    text = one(objs, "ConfigMap")["data"]["config.yaml"]
    assert not any(value.decode() in text for value in secret_keys.values())
    config = yaml.safe_load(text)[section]
    secrets_dir = "/etc/incident-sla-sidecar/secrets"
    if section == "slack":
        assert config["token_file"] == f"{secrets_dir}/slack-token"
        assert config["channels"]["stakeholder_severities"] == ["P0", "P1"]
    elif section == "jira":
        assert config["api_token_file"] == f"{secrets_dir}/jira-api-token"
    else:
        assert [h["secret_file"] for h in config] == [
            f"{secrets_dir}/webhook-status-page",
            f"{secrets_dir}/webhook-chatops",
        ]


def test_slack_requires_its_token_without_existing_secret(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"slack\.token is required"):
        chart.render({"slack": {"enabled": True}}, name=RELEASE, namespace=NAMESPACE)
