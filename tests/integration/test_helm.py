"""The Helm chart (helm/promptmill): lint it, render it, validate it, check what matters.

Every rendering (KEDA on, KEDA off with HPAs, fixed replicas, SASL/TLS with secrets) is
validated document by document with ``kubeconform -strict`` against the Kubernetes API
schemas and the KEDA and prometheus-operator CRDs, all prepared offline and cached by
``helm/tools.sh`` (``make test`` runs it first; it needs Go). The semantics are then
asserted on the parsed YAML: one ScaledObject per processor on its topics and group,
reading from the earliest offset, capped at its partitions; no HPA next to KEDA; a grace
period longer than the drain; probes, security context, and secrets only by reference.
The front door (``serve``) is rendered with an ingress, TLS, an HPA and S3, and with a
shared claim: its probes, ports, Service, secret references and blob store, the outputs
worker that runs with it, and the refusal of a blob directory that its pods cannot share.
The chart is also checked against the code: the workers' topics and groups, the topic
catalog's partitions, the settings model, and the KEDA kafka scaler's parameter names.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from promptmill.commands.worker import PROCESSORS
from promptmill.settings import Settings
from tests.integration.helm_chart import (
    CHART,
    PREFIX,
    ROOT,
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
    secret_refs,
    serve_container,
    serves,
    value_flags,
)
from topics.catalog import DEFAULT_PARTITIONS

# Covers helm/tools.sh building helm and kubeconform on a fresh machine (~2 minutes on
# 2 cores) inside the session fixture; once built, each test takes about a second and
# every command it runs has its own timeout.
pytestmark = pytest.mark.timeout(600)

# Settings read PROMPTMILL_* and these names (promptmill/settings.py).
SETTINGS_ALIASES = {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY"}
# The S3 SDK's own names (the blob store), not settings.
AWS_NAMES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
# A blob directory that serve's and the outputs worker's pods share.
SHARED = {"blobStore": {"existingClaim": "promptmill-files"}}
SERVE = f"{PREFIX}-serve"


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


@pytest.mark.parametrize("scenario", ["keda", "secure", "serve-s3", "serve-pvc"])
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
    # completions, failures and evals
    assert scaled[f"{PREFIX}-reporting"]["spec"]["maxReplicaCount"] == 6 + 5 + 6
    assert json.loads(out.config["PROMPTMILL_TOPIC_PARTITIONS"])["jobs"] == 24
    pinned = render(tools, {"processors": {"prompts": {"maxReplicas": 4}}})
    assert pinned.one("ScaledObject", f"{PREFIX}-prompts")["spec"]["maxReplicaCount"] == 4


def test_the_evals_worker_runs_when_enabled(tools: Tools) -> None:
    out = render(tools, {"processors": {"evals": {"enabled": True}}})
    evals = out.one("Deployment", f"{PREFIX}-evals")
    assert container(evals)["args"] == ["worker", "--processor", "evals"]
    [trigger] = out.one("ScaledObject", f"{PREFIX}-evals")["spec"]["triggers"]
    assert trigger["metadata"]["topic"] == "promptmill.completions"
    assert trigger["metadata"]["consumerGroup"] == "promptmill.evals"
    reporting = out.one("ScaledObject", f"{PREFIX}-reporting")["spec"]["triggers"]
    assert "promptmill.evals" in {t["metadata"]["topic"] for t in reporting}


def test_trigger_metadata_is_what_the_kafka_scaler_reads(
    tools: Tools, rendered: dict[str, Rendered]
) -> None:
    """Metadata is a free-form map to the CRD: check names and enums against KEDA's source."""
    params: dict[str, dict[str, list[str]]] = json.loads(tools.keda_kafka_parameters.read_text())
    for scenario in ("keda", "secure", "secret-username", "ssl-system-ca", "serve-s3"):
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
        for name in enabled_processors(serve=serves(scenario)):
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
            chart_values()["processors"][name]["concurrency"]
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


def test_alerts_watch_the_fleet_on_series_the_workers_export(
    tools: Tools, rendered: dict[str, Rendered]
) -> None:
    """The PrometheusRule sums every worker's series of the release (namespace, and the
    ServiceMonitor's jobs: the Services' names), and names only metrics and labels that the
    code registers (the scrape adds namespace, job and pod)."""
    [rule] = rendered["secure"].kind("PrometheusRule").values()
    assert rendered["keda"].kind("PrometheusRule") == {}  # off by default
    rules = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(rules) == {
        "PromptmillEvalPassRateLow",
        "PromptmillRedisUnavailable",
        "PromptmillModelBreakerOpen",
        "PromptmillModelCredentialsRejected",
        "PromptmillDeadLetterRateHigh",
    }
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus"
    low = rules["PromptmillEvalPassRateLow"]
    assert ") < 0.75" in low["expr"] and ">= 50" in low["expr"] and "[1h]" in low["expr"]
    assert "[30m]" not in low["expr"] and low["for"] == "15m"
    fors = {name: r["for"] for name, r in rules.items()}
    assert fors["PromptmillRedisUnavailable"] == "3m"
    assert fors["PromptmillModelBreakerOpen"] == "20m"
    assert fors["PromptmillModelCredentialsRejected"] == "1m"
    assert rules["PromptmillDeadLetterRateHigh"]["expr"].endswith("> 0.1")
    severities = {name: r["labels"]["severity"] for name, r in rules.items()}
    assert severities.pop("PromptmillModelCredentialsRejected") == "critical"
    assert set(severities.values()) == {"page"}
    assert "{{ $labels.template }}@{{ $labels.version }}" in low["annotations"]["summary"]
    parsed = subprocess.run(
        [tools.promql_check],
        input=json.dumps({name: r["expr"] for name, r in rules.items()}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert parsed.returncode == 0, parsed.stdout + parsed.stderr  # PromQL that Prometheus reads
    services = set(rendered["secure"].kind("Service"))
    sources = "\n".join(
        path.read_text()
        for folder in ("processors", "producers", "topics", "promptmill")
        for path in (ROOT / folder).rglob("*.py")
    )
    for name, alert in rules.items():
        expr = alert["expr"]
        for selector in re.findall(r"\{([^}]*)\}", expr):
            assert 'namespace="llm"' in selector and f'job=~"{PREFIX}-.*"' in selector, name
        assert all(re.fullmatch(f"{PREFIX}-.*", s) for s in services)
        for metric in set(re.findall(r"\bpromptmill_[a-z_]+", expr)):
            at = sources.find(f'"{metric}"')
            assert at >= 0, f"{name}: {metric} is not a metric the code registers"
            declared = sources[max(0, at - 200) : at + 400]  # its name, help and labels
            used = re.findall(r"by \(([^)]*)\)", expr) + re.findall(r"(\w+)=", expr)
            labels = {x.strip() for u in used for x in u.split(",")} - {"namespace", "job", "pod"}
            for label in labels:
                assert f'"{label}"' in declared, f"{name}: {metric} has no label {label}"


# --- the front door -------------------------------------------------------------------


def test_serve_and_outputs_run_only_when_serve_is_enabled(rendered: dict[str, Rendered]) -> None:
    for scenario, out in rendered.items():
        deployments = out.kind("Deployment")
        expected = {f"{PREFIX}-{name}" for name in enabled_processors(serve=serves(scenario))}
        if serves(scenario):
            expected.add(SERVE)
            assert f"{PREFIX}-outputs" in expected
        assert set(deployments) == expected, scenario
        if not serves(scenario):
            assert "PROMPTMILL_BLOB_URL" not in out.config
            assert out.kind("Ingress") == {} and SERVE not in out.kind("Service")
    outputs = rendered["serve-s3"].one("Deployment", f"{PREFIX}-outputs")
    assert container(outputs)["args"] == ["worker", "--processor", "outputs"]
    scaled = rendered["serve-s3"].one("ScaledObject", f"{PREFIX}-outputs")["spec"]
    [trigger] = scaled["triggers"]
    assert trigger["metadata"]["topic"] == "promptmill.batches"
    assert trigger["metadata"]["consumerGroup"] == "promptmill.outputs"
    assert scaled["maxReplicaCount"] == chart_values()["topics"]["partitions"]["batches"]
    assert f"{PREFIX}-outputs" in rendered["serve-pvc"].kind("HorizontalPodAutoscaler")


@pytest.mark.parametrize("scenario", ["serve-s3", "serve-pvc"])
def test_serve_pod_listens_with_probes_and_a_locked_down_container(
    rendered: dict[str, Rendered], scenario: str
) -> None:
    https = scenario == "serve-s3"
    scheme = "HTTPS" if https else "HTTP"
    deployment = rendered[scenario].one("Deployment", SERVE)
    pod = deployment["spec"]["template"]["spec"]
    serve = serve_container(deployment)
    assert serve["args"] == ["serve", "--host", "0.0.0.0"]
    assert serve["envFrom"] == [{"configMapRef": {"name": PREFIX}}]
    assert serve["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    env = env_of(deployment)
    assert env["PROMPTMILL_SERVE_PORT"]["value"] == "8080"
    assert env["PROMPTMILL_SERVE_MAX_FILE_BYTES"]["value"] == "209715200"
    assert env["PROMPTMILL_SERVE_MAX_REQUESTS"]["value"] == "50000"
    for probe, path in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ]:
        assert serve[probe]["httpGet"] == {"path": path, "port": "http", "scheme": scheme}
    assert serve["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert pod["terminationGracePeriodSeconds"] > 60 + 5  # aiohttp's shutdown timeout
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = serve["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert serve["resources"]["requests"] and serve["resources"]["limits"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    prompts = rendered[scenario].one("Deployment", f"{PREFIX}-prompts")
    assert (
        annotations["checksum/config"]
        == (prompts["spec"]["template"]["metadata"]["annotations"]["checksum/config"])
    )
    mounts = {m["name"]: m for m in serve["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["tmp"]["mountPath"] == "/tmp"
    if https:
        assert env["PROMPTMILL_SERVE_TLS_CERT"]["value"] == "/etc/promptmill/serve-tls/cert.pem"
        assert env["PROMPTMILL_SERVE_TLS_KEY"]["value"] == "/etc/promptmill/serve-tls/key.pem"
        assert mounts["serve-tls"] == {
            "name": "serve-tls",
            "mountPath": "/etc/promptmill/serve-tls",
            "readOnly": True,
        }
        assert volumes["serve-tls"]["secret"]["secretName"] == "serve-tls"
        assert {i["key"] for i in volumes["serve-tls"]["secret"]["items"]} == {
            "cert.pem",
            "key.pem",
        }
    else:
        assert "PROMPTMILL_SERVE_TLS_CERT" not in env and "serve-tls" not in volumes


def test_serve_service_ingress_hpa_pdb_and_monitor(rendered: dict[str, Rendered]) -> None:
    out = rendered["serve-s3"]
    deployment = out.one("Deployment", SERVE)
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/component"] == "serve"
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    service = out.one("Service", SERVE)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"] == [
        {
            "name": "http",
            "port": 443,
            "targetPort": "http",
            "protocol": "TCP",
            "appProtocol": "https",
        }
    ]
    ingress = out.one("Ingress", SERVE)["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["tls"] == [{"secretName": "llm-example-tls", "hosts": ["llm.example.com"]}]
    [rule] = ingress["rules"]
    assert rule["host"] == "llm.example.com"
    [path] = rule["http"]["paths"]
    assert path == {
        "path": "/",
        "pathType": "Prefix",
        "backend": {"service": {"name": SERVE, "port": {"name": "http"}}},
    }
    annotations = out.one("Ingress", SERVE)["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS"
    hpa = out.one("HorizontalPodAutoscaler", SERVE)["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": SERVE}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    [metric] = hpa["metrics"]
    assert metric["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 60},
    }
    assert out.one("PodDisruptionBudget", SERVE)["spec"]["selector"]["matchLabels"] == selector
    [monitor] = out.kind("ServiceMonitor").values()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    endpoints = {e["port"]: e for e in monitor["spec"]["endpoints"]}
    assert endpoints["http"]["path"] == "/metrics"
    assert endpoints["http"]["scheme"] == "https"
    assert endpoints["http"]["tlsConfig"]["serverName"] == "llm.example.com"
    assert endpoints["metrics"]["path"] == "/metrics"

    pvc = rendered["serve-pvc"]
    assert pvc.one("Deployment", SERVE)["spec"]["replicas"] == 3
    assert SERVE not in pvc.kind("HorizontalPodAutoscaler")
    assert pvc.kind("Ingress") == {} and pvc.kind("ServiceMonitor") == {}
    assert pvc.one("Service", SERVE)["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}
    ]


def test_serve_secrets_are_only_referenced(rendered: dict[str, Rendered]) -> None:
    out = rendered["serve-s3"]
    assert out.kind("Secret") == {}
    config = out.config
    assert config["PROMPTMILL_BLOB_URL"] == "s3://promptmill-files/prod"
    assert config["PROMPTMILL_S3_ENDPOINT_URL"] == "https://minio.storage:9000"
    assert config["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(config)
    s3 = {
        "AWS_ACCESS_KEY_ID": {"name": "s3-credentials", "key": "id"},
        "AWS_SECRET_ACCESS_KEY": {"name": "s3-credentials", "key": "secret"},
    }
    shared = {
        "REDIS_URL": {"name": "redis", "key": "url"},
        "PROMPTMILL_KAFKA_SASL_PASSWORD": {"name": "kafka-user", "key": "password"},
    }
    serve = out.one("Deployment", SERVE)
    # serve never calls the model: no model key.
    assert secret_refs(serve) == {**shared, **s3}
    outputs = out.one("Deployment", f"{PREFIX}-outputs")
    assert secret_refs(outputs) == {
        "OPENAI_API_KEY": {"name": "openai", "key": "api-key"},
        **shared,
        **s3,
    }
    for name in enabled_processors():
        assert not s3.keys() & secret_refs(out.one("Deployment", f"{PREFIX}-{name}")).keys()
    for deployment in (serve, outputs):
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["kafka-tls"]["secret"]["secretName"] == "kafka-tls"
        assert "blobs" not in volumes  # S3: nothing to mount


def test_serve_and_outputs_share_the_claim(rendered: dict[str, Rendered]) -> None:
    out = rendered["serve-pvc"]
    directory = chart_values()["blobStore"]["url"]
    assert directory.startswith("/")
    assert out.config["PROMPTMILL_BLOB_URL"] == directory
    for name in ("serve", "outputs"):
        deployment = out.one("Deployment", f"{PREFIX}-{name}")
        pod = deployment["spec"]["template"]["spec"]
        [only] = pod["containers"]
        mounts = {m["name"]: m for m in only["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert mounts["blobs"] == {"name": "blobs", "mountPath": directory, "subPath": "prod"}
        assert volumes["blobs"] == {
            "name": "blobs",
            "persistentVolumeClaim": {"claimName": "promptmill-files"},
        }
        assert pod["securityContext"]["fsGroup"] == 10001
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & env_of(deployment).keys()
    for name in enabled_processors():
        pod = out.one("Deployment", f"{PREFIX}-{name}")["spec"]["template"]["spec"]
        assert "blobs" not in {v["name"] for v in pod["volumes"]}


@pytest.mark.parametrize(
    "serve",
    [
        {"enabled": True, "replicas": 1},
        {"enabled": True, "replicas": 3},
        {"enabled": True, "autoscaling": {"enabled": True}},
    ],
    ids=["one-replica", "replicas", "hpa"],
)
def test_a_blob_directory_without_a_shared_claim_fails(tools: Tools, serve: dict[str, Any]) -> None:
    """serve and the outputs worker are separate pods: a pod-local directory is never shared."""
    with pytest.raises(RenderError) as refused:
        render(tools, {"serve": serve})
    message = str(refused.value)
    assert (
        "blobStore.url is the directory /var/lib/promptmill/files "
        "and no blobStore.existingClaim shares it"
    ) in message
    replicas = (
        "2..10 replicas by its HPA"
        if serve.get("autoscaling")
        else f"{serve['replicas']} replica{'s' if serve['replicas'] > 1 else ''}"
    )
    assert f"serve ({replicas}) stores the uploaded files" in message
    assert "Set blobStore.existingClaim" in message and "s3://bucket/prefix" in message


@pytest.mark.parametrize("scenario", ["serve-s3", "serve-pvc"])
def test_serve_settings_are_accepted(
    rendered: dict[str, Rendered], scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("PROMPTMILL_") or name in SETTINGS_ALIASES:
            monkeypatch.delenv(name)
    out = rendered[scenario]
    for name, value in out.config.items():
        monkeypatch.setenv(name, value)
    for name, entry in env_of(out.one("Deployment", SERVE)).items():
        monkeypatch.setenv(name, entry.get("value", "from-a-secret"))
    settings = Settings(_env_file=None)
    assert settings.serve_port == 8080
    assert settings.serve_max_file_bytes == 209715200
    assert settings.serve_max_requests == 50000
    assert settings.blob_url == out.config["PROMPTMILL_BLOB_URL"]
    if scenario == "serve-s3":
        assert str(settings.serve_tls_cert) == "/etc/promptmill/serve-tls/cert.pem"
        assert str(settings.serve_tls_key) == "/etc/promptmill/serve-tls/key.pem"
        assert settings.s3_endpoint_url == "https://minio.storage:9000"
    else:
        assert settings.serve_tls_cert is None and settings.s3_endpoint_url is None


def test_every_variable_the_chart_sets_is_a_setting(rendered: dict[str, Rendered]) -> None:
    known = {f"PROMPTMILL_{name.upper()}" for name in Settings.model_fields}
    known |= SETTINGS_ALIASES | AWS_NAMES
    for scenario, out in rendered.items():
        names = set(out.config)
        for deployment in out.kind("Deployment").values():
            names |= env_of(deployment).keys()
        assert names <= known, f"{scenario}: {sorted(names - known)}"


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
        (
            {"serve": {"enabled": True}, "processors": {"outputs": {"enabled": False}}},
            "serve needs processors.outputs.enabled",
        ),
        (
            {"serve": {"enabled": True}, "blobStore": {"url": "s3://b-1/p", "existingClaim": "c"}},
            "blobStore.existingClaim (c) is for a directory",
        ),
        (
            {"blobStore": {"s3": {"existingSecret": "s3"}}},
            "blobStore.s3.* is set, but blobStore.url (/var/lib/promptmill/files) is not",
        ),
        (
            {"serve": {"enabled": True, "terminationGracePeriodSeconds": 5}, **SHARED},
            "serve.terminationGracePeriodSeconds (5) must be greater",
        ),
        (
            {
                "serve": {
                    "enabled": True,
                    "autoscaling": {"enabled": True, "minReplicas": 9, "maxReplicas": 4},
                },
                **SHARED,
            },
            "serve.autoscaling.minReplicas (9) is above its maxReplicas (4)",
        ),
        ({"serve": {"enabled": True}, "redis": {"url": ""}, **SHARED}, "needs Redis"),
        ({"blobStore": {"url": "files"}}, "/blobStore/url"),
        ({"serve": {"ingress": {"hosts": []}}}, "/serve/ingress/hosts"),
        ({"serve": {"ingress": {"clasName": "x"}}}, "'clasName' not allowed"),
        (
            {"processors": {"serve": dict(chart_values()["processors"]["prompts"])}},
            "invalid propertyName 'serve'",
        ),
        ({"prometheusRule": {"evalPassRate": {"threshold": 80}}}, "/prometheusRule/evalPassRate"),
        ({"prometheusRule": {"breakerOpenFor": "ten minutes"}}, "/prometheusRule/breakerOpenFor"),
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
        "serve-without-outputs",
        "claim-with-s3",
        "s3-settings-with-a-directory",
        "serve-grace-not-above-prestop",
        "serve-min-above-max",
        "serve-without-redis",
        "relative-blob-directory",
        "ingress-without-hosts",
        "misspelt-ingress-key",
        "processor-named-serve",
        "pass-rate-not-a-ratio",
        "alert-duration-not-promql",
    ],
)
def test_bad_values_are_refused(tools: Tools, values: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError) as refused:
        render(tools, values)
    assert message in str(refused.value)
