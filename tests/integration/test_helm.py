"""The Helm chart (helm/promptmill): lint it, render it, validate it, check what matters.

Every rendering (KEDA on, KEDA off with HPAs, fixed replicas, SASL/TLS with secrets) is
validated document by document with ``kubeconform -strict`` against the Kubernetes API
schemas and the KEDA and prometheus-operator CRDs, all prepared offline and cached by
``helm/tools.sh`` (``make test`` runs it first; it needs Go). The semantics are then
asserted on the parsed YAML: one ScaledObject per processor on its topics and group,
reading from the earliest offset, capped at its partitions; no HPA next to KEDA; a grace
period longer than the drain; probes, security context, and secrets only by reference.
The chart is also checked against the code: the workers' topics and groups, the topic
catalog's partitions, the settings model, and the KEDA kafka scaler's parameter names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from promptmill.commands.worker import PROCESSORS
from promptmill.settings import Settings
from tests.integration.helm_chart import (
    CHART,
    PREFIX,
    SCENARIOS,
    Manifest,
    Rendered,
    RenderError,
    Tools,
    ToolsUnavailable,
    chart_values,
    container,
    enabled_processors,
    env_of,
    find_tools,
    helm,
    kubeconform,
    partitions_of,
    render,
    value_flags,
)
from topics.catalog import DEFAULT_PARTITIONS

# Covers helm/tools.sh building helm and kubeconform on a fresh machine (~2 minutes on
# 2 cores) inside the session fixture; once built, each test takes about a second and
# every command it runs has its own timeout.
pytestmark = pytest.mark.timeout(600)

# Settings read PROMPTMILL_* and these names (promptmill/settings.py).
SETTINGS_ALIASES = {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY"}


@pytest.fixture(scope="session")
def tools() -> Tools:
    try:
        return find_tools()
    except ToolsUnavailable as exc:
        pytest.fail(f"chart tools unavailable: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def rendered(tools: Tools) -> dict[str, Rendered]:
    return {name: render(tools, values) for name, values in SCENARIOS.items()}


# --- lint and validation -------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["keda", "secure"])
def test_helm_lint_strict(tools: Tools, scenario: str) -> None:
    for strict in ([], ["--strict"]):
        proc = helm(
            tools,
            "lint",
            *strict,
            str(CHART),
            "--kube-version",
            tools.kube_version,
            *value_flags(SCENARIOS[scenario]),
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_renders_valid_manifests(
    rendered: dict[str, Rendered], scenario: str
) -> None:
    kinds = {d["kind"] for d in rendered[scenario].docs}
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"} <= kinds


def test_kubeconform_rejects_a_misspelt_field(tools: Tools) -> None:
    """The validation is not vacuous: an unknown field fails, in core kinds and CRDs."""
    ok = render(tools, {"serviceMonitor": {"enabled": True}})
    text = yaml.safe_dump_all(ok.docs)
    for good, bad in [
        ("readinessProbe:", "readinesProbe:"),
        ("offsetResetPolicy: earliest", "offsetResetPolicy: 1"),
        ("cooldownPeriod:", "coolDownPeriod:"),
        ("scrapeTimeout:", "scrapeTimout:"),
    ]:
        assert good in text
        proc = kubeconform(tools, text.replace(good, bad, 1))
        assert proc.returncode != 0, f"{bad} passed validation"


# --- the chart agrees with the code ---------------------------------------------------


def test_processors_match_the_workers() -> None:
    processors = chart_values()["processors"]
    assert set(processors) == set(PROCESSORS)
    for name, (kinds, group) in PROCESSORS.items():
        assert processors[name]["topics"] == [kind.value for kind in kinds], name
        assert processors[name]["group"] == group.value, name


def test_partitions_match_the_topic_catalog() -> None:
    partitions = chart_values()["topics"]["partitions"]
    assert partitions == {kind.value: count for kind, count in DEFAULT_PARTITIONS.items()}


@pytest.mark.parametrize("scenario", ["keda", "secure"])
def test_configmap_is_accepted_by_the_settings(
    rendered: dict[str, Rendered], scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("PROMPTMILL_") or name in SETTINGS_ALIASES:
            monkeypatch.delenv(name)
    data = rendered[scenario].config
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    deployment = rendered[scenario].one("Deployment", f"{PREFIX}-prompts")
    for name, entry in env_of(deployment).items():
        monkeypatch.setenv(name, entry.get("value", "from-a-secret"))
    settings = Settings(_env_file=None)
    values = chart_values()
    assert settings.topic_prefix == values["topics"]["prefix"]
    assert settings.topic_partitions == values["topics"]["partitions"]
    assert settings.worker_drain_seconds == values["worker"]["drainSeconds"]
    assert settings.worker_concurrency == values["processors"]["prompts"]["concurrency"]
    assert settings.metrics_port == 9464
    assert str(settings.state_dir).startswith("/tmp/")
    assert str(settings.cache_dir).startswith("/tmp/")
    if scenario == "secure":
        assert settings.kafka_security_protocol == "SASL_SSL"
        assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
        assert settings.kafka_sasl_username == "promptmill"
        assert str(settings.kafka_ssl_cafile) == "/etc/promptmill/kafka-tls/ca.crt"
        assert str(settings.kafka_ssl_keyfile) == "/etc/promptmill/kafka-tls/tls.key"
        assert settings.model_limits["gpt-4o-mini"].tpm == 200000
        assert settings.tenant_limits["acme"].tpm == 100000
        assert settings.model_prices["gpt-4o-mini"].completion_per_1m == 0.6
        assert settings.moderation_model == "omni-moderation-latest"


# --- scaling --------------------------------------------------------------------------


def test_a_scaledobject_per_processor_reads_from_earliest(
    rendered: dict[str, Rendered],
) -> None:
    keda = rendered["keda"]
    scaled = keda.kind("ScaledObject")
    assert set(scaled) == {f"{PREFIX}-{name}" for name in enabled_processors()}
    assert keda.kind("HorizontalPodAutoscaler") == {}
    assert keda.kind("TriggerAuthentication") == {}
    for name, processor in enabled_processors().items():
        spec = scaled[f"{PREFIX}-{name}"]["spec"]
        assert spec["scaleTargetRef"] == {"name": f"{PREFIX}-{name}"}
        assert spec["minReplicaCount"] == processor["minReplicas"]
        assert spec["maxReplicaCount"] == partitions_of(processor)
        triggers = spec["triggers"]
        assert [t["metadata"]["topic"] for t in triggers] == [
            f"promptmill.{kind}" for kind in processor["topics"]
        ]
        for trigger in triggers:
            meta = trigger["metadata"]
            assert trigger["type"] == "kafka"
            assert meta["consumerGroup"] == f"promptmill.{processor['group']}"
            assert meta["offsetResetPolicy"] == "earliest"
            assert meta["allowIdleConsumers"] == "false"
            assert meta["lagThreshold"] == str(processor["lagThreshold"])
            assert meta["bootstrapServers"] == "kafka:9092"
            assert "tls" not in meta and "sasl" not in meta and "authenticationRef" not in trigger
        modifiers = spec.get("advanced", {}).get("scalingModifiers")
        if len(triggers) > 1:
            assert modifiers["formula"] == " + ".join(t["name"] for t in triggers)
            assert modifiers["target"] == str(processor["lagThreshold"])
        else:
            assert modifiers is None
        deployment = keda.one("Deployment", f"{PREFIX}-{name}")
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count"


def test_max_replicas_follow_the_partitions(tools: Tools) -> None:
    out = render(
        tools,
        {"topics": {"partitions": {"jobs": 24, "failures": 5}}},
    )
    scaled = out.kind("ScaledObject")
    assert scaled[f"{PREFIX}-prompts"]["spec"]["maxReplicaCount"] == 24
    assert scaled[f"{PREFIX}-batches"]["spec"]["maxReplicaCount"] == 6 + 5 + 3
    assert scaled[f"{PREFIX}-reporting"]["spec"]["maxReplicaCount"] == 6 + 5
    assert json.loads(out.config["PROMPTMILL_TOPIC_PARTITIONS"])["jobs"] == 24
    pinned = render(tools, {"processors": {"prompts": {"maxReplicas": 4}}})
    assert pinned.one("ScaledObject", f"{PREFIX}-prompts")["spec"]["maxReplicaCount"] == 4


def test_trigger_metadata_is_what_the_kafka_scaler_reads(
    tools: Tools, rendered: dict[str, Rendered]
) -> None:
    """Metadata is a free-form map to the CRD: check names and enums against KEDA's source."""
    params: dict[str, dict[str, list[str]]] = json.loads(tools.keda_kafka_parameters.read_text())
    for scenario in ("keda", "secure", "secret-username", "ssl-system-ca"):
        out = rendered[scenario]
        for scaled in out.kind("ScaledObject").values():
            for trigger in scaled["spec"]["triggers"]:
                for key, value in trigger["metadata"].items():
                    assert key in params, f"{scenario}: kafka scaler has no {key!r}"
                    assert "triggerMetadata" in params[key]["order"], key
                    enum = params[key]["enum"]
                    assert not enum or value in enum, f"{key}={value!r} not in {enum}"
        for auth in out.kind("TriggerAuthentication").values():
            spec = auth["spec"]
            for ref in [*spec.get("secretTargetRef", []), *spec.get("env", [])]:
                assert "authParams" in params[ref["parameter"]]["order"], ref


def test_hpa_on_cpu_when_keda_is_off(rendered: dict[str, Rendered]) -> None:
    hpa = rendered["hpa"]
    assert hpa.kind("ScaledObject") == {} and hpa.kind("TriggerAuthentication") == {}
    hpas = hpa.kind("HorizontalPodAutoscaler")
    assert set(hpas) == {f"{PREFIX}-{name}" for name in enabled_processors()}
    for name, processor in enabled_processors().items():
        spec = hpas[f"{PREFIX}-{name}"]["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"{PREFIX}-{name}",
        }
        assert spec["minReplicas"] == max(1, processor["minReplicas"])
        assert spec["maxReplicas"] == partitions_of(processor)
        [metric] = spec["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert "replicas" not in hpa.one("Deployment", f"{PREFIX}-{name}")["spec"]


def test_fixed_replicas_without_autoscaling(rendered: dict[str, Rendered]) -> None:
    fixed = rendered["fixed"]
    assert fixed.kind("ScaledObject") == {} and fixed.kind("HorizontalPodAutoscaler") == {}
    for name, processor in enabled_processors().items():
        deployment = fixed.one("Deployment", f"{PREFIX}-{name}")
        assert deployment["spec"]["replicas"] == processor["replicas"]


# --- the pods -------------------------------------------------------------------------


def _deployments(rendered: dict[str, Rendered]) -> Iterator[tuple[str, str, Manifest]]:
    for scenario, out in rendered.items():
        for name in enabled_processors():
            yield scenario, name, out.one("Deployment", f"{PREFIX}-{name}")


def test_grace_period_outlasts_the_drain(rendered: dict[str, Rendered]) -> None:
    for scenario, _, deployment in _deployments(rendered):
        drain = float(rendered[scenario].config["PROMPTMILL_WORKER_DRAIN_SECONDS"])
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > drain


@pytest.mark.parametrize("grace", [25, 20])
def test_grace_period_not_above_the_drain_fails(tools: Tools, grace: int) -> None:
    with pytest.raises(RenderError, match=r"terminationGracePeriodSeconds \(\d+\) must be greater"):
        render(tools, {"worker": {"drainSeconds": 25, "terminationGracePeriodSeconds": grace}})


def test_pods_run_the_processor_with_probes_and_a_locked_down_container(
    rendered: dict[str, Rendered],
) -> None:
    for _, name, deployment in _deployments(rendered):
        pod = deployment["spec"]["template"]["spec"]
        worker = container(deployment)
        assert worker["args"] == ["worker", "--processor", name]
        assert worker["envFrom"] == [{"configMapRef": {"name": PREFIX}}]
        assert worker["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
        probes = {k: worker[k]["httpGet"] for k in ("livenessProbe", "readinessProbe")}
        assert probes["livenessProbe"] == {"path": "/healthz", "port": "metrics"}
        assert probes["readinessProbe"] == {"path": "/readyz", "port": "metrics"}
        assert worker["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = worker["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsUser"] == 10001 and sc["runAsNonRoot"] is True
        mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert mounts["tmp"] == "/tmp" and "emptyDir" in volumes["tmp"]
        assert pod["automountServiceAccountToken"] is False
        assert worker["resources"]["requests"] and worker["resources"]["limits"]
        assert env_of(deployment)["PROMPTMILL_WORKER_CONCURRENCY"]["value"] == str(
            enabled_processors()[name]["concurrency"]
        )


def test_services_pdbs_and_servicemonitor_select_the_pods(rendered: dict[str, Rendered]) -> None:
    out = rendered["secure"]
    [monitor] = out.kind("ServiceMonitor").values()
    for name in enabled_processors():
        deployment = out.one("Deployment", f"{PREFIX}-{name}")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        service = out.one("Service", f"{PREFIX}-{name}")
        assert service["spec"]["selector"] == selector
        assert selector.items() <= pod_labels.items()
        assert service["spec"]["ports"] == [
            {"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"}
        ]
        pdb = out.one("PodDisruptionBudget", f"{PREFIX}-{name}")
        assert pdb["spec"]["selector"]["matchLabels"] == selector
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert rendered["keda"].kind("ServiceMonitor") == {}


# --- secrets --------------------------------------------------------------------------


def test_secrets_are_only_referenced(rendered: dict[str, Rendered]) -> None:
    out = rendered["secure"]
    assert out.kind("Secret") == {}
    config = out.config
    assert "REDIS_URL" not in config and "PROMPTMILL_KAFKA_SASL_PASSWORD" not in config
    assert config["PROMPTMILL_KAFKA_SSL_CERTFILE"] == "/etc/promptmill/kafka-tls/tls.crt"
    for name in enabled_processors():
        deployment = out.one("Deployment", f"{PREFIX}-{name}")
        env = env_of(deployment)
        refs = {k: v["valueFrom"]["secretKeyRef"] for k, v in env.items() if "valueFrom" in v}
        assert refs == {
            "OPENAI_API_KEY": {"name": "openai", "key": "api-key"},
            "REDIS_URL": {"name": "redis", "key": "url"},
            "PROMPTMILL_KAFKA_SASL_PASSWORD": {"name": "kafka-user", "key": "password"},
        }
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["kafka-tls"]["secret"]["secretName"] == "kafka-tls"
    [auth] = out.kind("TriggerAuthentication").values()
    targets = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert targets == {
        "password": ("kafka-user", "password"),
        "ca": ("kafka-tls", "ca.crt"),
        "cert": ("kafka-tls", "tls.crt"),
        "key": ("kafka-tls", "tls.key"),
    }
    assert auth["spec"]["env"] == [
        {
            "parameter": "username",
            "name": "PROMPTMILL_KAFKA_SASL_USERNAME",
            "containerName": "worker",
        }
    ]
    for scaled in out.kind("ScaledObject").values():
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["metadata"]["tls"] == "enable"
            assert trigger["metadata"]["sasl"] == "scram_sha512"
            assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}


def test_a_username_from_the_secret(rendered: dict[str, Rendered]) -> None:
    out = rendered["secret-username"]
    assert "PROMPTMILL_KAFKA_SASL_USERNAME" not in out.config
    env = env_of(out.one("Deployment", f"{PREFIX}-prompts"))
    assert env["PROMPTMILL_KAFKA_SASL_USERNAME"]["valueFrom"]["secretKeyRef"] == {
        "name": "kafka-user",
        "key": "username",
    }
    [auth] = out.kind("TriggerAuthentication").values()
    assert "env" not in auth["spec"]
    params = {r["parameter"] for r in auth["spec"]["secretTargetRef"]}
    assert params == {"username", "password"}
    for scaled in out.kind("ScaledObject").values():
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["metadata"]["sasl"] == "plaintext" and "tls" not in trigger["metadata"]


# --- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka": {"securityProtocol": "SASL_SSL"}}, "kafka.sasl.existingSecret is required"),
        (
            {"kafka": {"securityProtocol": "SSL", "tls": {"existingSecret": "t", "certKey": "c"}}},
            "certKey and kafka.tls.keyKey go together",
        ),
        ({"kafka": {"tls": {"existingSecret": "t"}}}, "use SSL or SASL_SSL"),
        ({"redis": {"url": ""}}, "processors.batches needs Redis"),
        ({"processors": {"prompts": {"topics": ["jobz"]}}}, '"jobz" has no entry'),
        ({"processors": {"moderation": {"minReplicas": 7}}}, "minReplicas (7) is above"),
        ({"model": {"baseUrl": ""}}, "/model/baseUrl"),
        ({"worker": {"logLevel": "LOUD"}}, "/worker/logLevel"),
        ({"processors": {"prompts": {"lagThresold": 9}}}, "'lagThresold' not allowed"),
    ],
    ids=[
        "sasl-without-secret",
        "cert-without-key",
        "tls-secret-without-tls",
        "no-redis-for-batches",
        "unknown-topic",
        "min-above-max",
        "no-model-url",
        "bad-log-level",
        "misspelt-key",
    ],
)
def test_bad_values_are_refused(tools: Tools, values: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError) as refused:
        render(tools, values)
    assert message in str(refused.value)
