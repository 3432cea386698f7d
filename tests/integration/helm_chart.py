"""Helpers of the Helm chart tests: find the tools, render the chart, validate it.

``helm/tools.sh`` builds helm and kubeconform and prepares the offline JSON schemas (once,
cached; it needs Go) and prints where they are; :func:`find_tools` reads that.
:func:`render` runs ``helm template`` and validates every document with
``kubeconform -strict`` before returning the parsed manifests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "promptmill"
RELEASE = "rel"
PREFIX = "rel-promptmill"
COMMAND_TIMEOUT = 120
TOOLS_TIMEOUT = 570  # building helm from scratch takes 2 to 3 minutes on 2 cores

Manifest = dict[str, Any]


# Values of the renderings that the tests check, by name.
SECURE: dict[str, Any] = {
    "kafka": {
        "bootstrapServers": "broker-0.kafka:9093,broker-1.kafka:9093",
        "securityProtocol": "SASL_SSL",
        "sasl": {
            "mechanism": "SCRAM-SHA-512",
            "username": "promptmill",
            "existingSecret": "kafka-user",
            "passwordKey": "password",
        },
        "tls": {
            "existingSecret": "kafka-tls",
            "caKey": "ca.crt",
            "certKey": "tls.crt",
            "keyKey": "tls.key",
        },
    },
    "redis": {"existingSecret": "redis", "urlKey": "url"},
    "model": {
        "apiKey": {"existingSecret": "openai", "key": "api-key"},
        "limits": {"gpt-4o-mini": {"rpm": 500, "tpm": 200000}, "*": {"rpm": 100}},
        "tenantLimits": {"acme": {"tpm": 100000}},
        "prices": {"gpt-4o-mini": {"prompt_per_1m": 0.15, "completion_per_1m": 0.6}},
        "moderationModel": "omni-moderation-latest",
    },
    "serviceMonitor": {"enabled": True},
    # every value not the default, so that a test sees each one's effect
    "prometheusRule": {
        "enabled": True,
        "labels": {"release": "kube-prometheus"},
        "severity": "page",
        "evalPassRate": {"threshold": 0.75, "window": "1h", "minSamples": 50, "for": "15m"},
        "redisUnavailableFor": "3m",
        "breakerOpenFor": "20m",
        "credentialsPausedFor": "1m",
        "deadLetterRatio": 0.1,
    },
}
# The front door with everything it can reference: HTTPS in the pods, an ingress with TLS,
# an HPA, S3 with its key pair from a Secret, and a ServiceMonitor; Kafka and Redis as SECURE.
SERVE_S3: dict[str, Any] = {
    **SECURE,
    "serve": {
        "enabled": True,
        "tls": {"existingSecret": "serve-tls", "certKey": "cert.pem", "keyKey": "key.pem"},
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "annotations": {
                "nginx.ingress.kubernetes.io/backend-protocol": "HTTPS",
                "nginx.ingress.kubernetes.io/proxy-body-size": "200m",
            },
            "hosts": [{"host": "llm.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
            "tls": [{"secretName": "llm-example-tls", "hosts": ["llm.example.com"]}],
        },
        "autoscaling": {
            "enabled": True,
            "minReplicas": 3,
            "maxReplicas": 12,
            "targetCPUUtilizationPercentage": 60,
        },
    },
    "blobStore": {
        "url": "s3://promptmill-files/prod",
        "s3": {
            "endpointUrl": "https://minio.storage:9000",
            "region": "eu-west-1",
            "existingSecret": "s3-credentials",
            "accessKeyIdKey": "id",
            "secretAccessKeyKey": "secret",
        },
    },
    "serviceMonitor": {
        "enabled": True,
        "serveTlsConfig": {
            "serverName": "llm.example.com",
            "ca": {"secret": {"name": "serve-tls", "key": "ca.crt"}},
        },
    },
}
# The front door on a directory shared through an existing claim, fixed replicas, no KEDA.
SERVE_PVC: dict[str, Any] = {
    "serve": {"enabled": True, "replicas": 3},
    "blobStore": {"existingClaim": "promptmill-files", "subPath": "prod"},
    "keda": {"enabled": False},
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "keda": {},
    "hpa": {"keda": {"enabled": False}},
    "fixed": {"keda": {"enabled": False}, "autoscaling": {"enabled": False}},
    "secure": SECURE,
    "secret-username": {
        "kafka": {
            "securityProtocol": "SASL_PLAINTEXT",
            "sasl": {
                "mechanism": "PLAIN",
                "existingSecret": "kafka-user",
                "usernameKey": "username",
            },
        }
    },
    "ssl-system-ca": {"kafka": {"securityProtocol": "SSL"}},
    "serve-s3": SERVE_S3,
    "serve-pvc": SERVE_PVC,
}


class ToolsUnavailable(Exception):
    """helm/tools.sh could not provide the tools (for instance, Go is missing)."""


@dataclass(frozen=True)
class Tools:
    """Where helm/tools.sh put the tools and schemas."""

    helm: str
    kubeconform: str
    schema_location: str
    keda_kafka_parameters: Path
    kube_version: str
    promql_check: str  # Prometheus's PromQL parser (helm/promql-check)


@dataclass(frozen=True)
class Rendered:
    docs: list[Manifest]

    def kind(self, kind: str) -> dict[str, Manifest]:
        return {d["metadata"]["name"]: d for d in self.docs if d["kind"] == kind}

    def one(self, kind: str, name: str) -> Manifest:
        return self.kind(kind)[name]

    @property
    def config(self) -> dict[str, str]:
        data: dict[str, str] = self.one("ConfigMap", PREFIX)["data"]
        return data


class RenderError(Exception):
    """helm template refused the values."""


def find_tools() -> Tools:
    """Build (the first time) or find helm, kubeconform, promql-check and the schemas."""
    proc = subprocess.run(
        ["bash", str(ROOT / "helm" / "tools.sh")],
        capture_output=True,
        text=True,
        timeout=TOOLS_TIMEOUT,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
    )
    if proc.returncode != 0:
        raise ToolsUnavailable((proc.stderr.strip().splitlines() or ["no output"])[-1])
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return Tools(
        helm=found["HELM"],
        kubeconform=found["KUBECONFORM"],
        schema_location=found["SCHEMA_LOCATION"],
        keda_kafka_parameters=Path(found["KEDA_KAFKA_PARAMETERS"]),
        kube_version=found["KUBE_VERSION"],
        promql_check=found["PROMQL_CHECK"],
    )


def value_flags(values: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for key, value in values.items():
        flags += ["--set-json", f"{key}={json.dumps(value)}"]
    return flags


def helm(tools: Tools, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tools.helm, *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def kubeconform(tools: Tools, manifests: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tools.kubeconform, "-strict", "-summary", "-schema-location", tools.schema_location],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def render(tools: Tools, values: dict[str, Any]) -> Rendered:
    """``helm template`` with ``values``, every document validated by kubeconform."""
    proc = helm(
        tools,
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        "llm",
        "--kube-version",
        tools.kube_version,
        *value_flags(values),
    )
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip())
    checked = kubeconform(tools, proc.stdout)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    summary = f"Valid: {len(docs)}, Invalid: 0, Errors: 0, Skipped: 0"
    assert summary in checked.stdout, checked.stdout
    return Rendered(docs)


def chart_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def serves(scenario: str) -> bool:
    """Whether the scenario runs the front door (``serve.enabled``)."""
    return bool(SCENARIOS[scenario].get("serve", {}).get("enabled"))


def enabled_processors(serve: bool = False) -> dict[str, dict[str, Any]]:
    """The processors that run by default; those marked withServe only with ``serve``."""
    return {
        k: v
        for k, v in chart_values()["processors"].items()
        if v["enabled"] and (serve or not v.get("withServe"))
    }


def partitions_of(processor: dict[str, Any]) -> int:
    partitions = chart_values()["topics"]["partitions"]
    return sum(int(partitions[kind]) for kind in processor["topics"])


def container(deployment: Manifest) -> Manifest:
    [worker] = deployment["spec"]["template"]["spec"]["containers"]
    assert worker["name"] == "worker"
    found: Manifest = worker
    return found


def serve_container(deployment: Manifest) -> Manifest:
    [serve] = deployment["spec"]["template"]["spec"]["containers"]
    assert serve["name"] == "serve"
    found: Manifest = serve
    return found


def env_of(deployment: Manifest) -> dict[str, Manifest]:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in only.get("env", [])}


def secret_refs(deployment: Manifest) -> dict[str, dict[str, str]]:
    """The container's env entries that come from a Secret: name -> {name, key}."""
    env = env_of(deployment)
    return {k: v["valueFrom"]["secretKeyRef"] for k, v in env.items() if "valueFrom" in v}
