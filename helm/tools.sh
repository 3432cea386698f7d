#!/usr/bin/env bash
# The chart's test tools, built from pinned Go modules and cached:
#   helm and kubeconform (go install), and JSON schemas for kubeconform made offline from
#   the Kubernetes OpenAPI spec and the KEDA and prometheus-operator CRDs ($crds below;
#   helm/jsonschemas.py).
# Idempotent: a second run only prints where everything is. Output (stdout), for the tests:
#   HELM=... KUBECONFORM=... SCHEMA_LOCATION=... KEDA_KAFKA_PARAMETERS=... KUBE_VERSION=...
#   PROMQL_CHECK=... (helm/promql-check, built with Prometheus's PromQL parser)
# Progress goes to stderr. Needs Go >= 1.21: helm and kubeconform want Go 1.26, which an
# older go fetches as a module itself (GOTOOLCHAIN=auto, the default), and a Python with
# PyYAML ($PYTHON, default python3). The cache is $PROMPTMILL_TOOLS_DIR, default
# ${PROMPTMILL_CACHE_DIR:-~/.cache/promptmill}/tools; Go's own caches hold the downloads.
set -euo pipefail

HELM_VERSION=v3.22.0
KUBECONFORM_VERSION=v0.8.0
KUBERNETES_VERSION=v1.34.4
KEDA_VERSION=v2.21.0
PROMETHEUS_OPERATOR_VERSION=v0.85.0

here=$(cd "$(dirname "$0")" && pwd)
tools=${PROMPTMILL_TOOLS_DIR:-${PROMPTMILL_CACHE_DIR:-$HOME/.cache/promptmill}/tools}
python=${PYTHON:-python3}
helm=$tools/helm-$HELM_VERSION/helm
kubeconform=$tools/kubeconform-$KUBECONFORM_VERSION/kubeconform
# the CRDs made into schemas (paths in their modules): a change makes the schemas anew
crds="keda:config/crd/bases/keda.sh_scaledobjects.yaml
keda:config/crd/bases/keda.sh_triggerauthentications.yaml
promop:example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml
promop:example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"
converter_sum=$( (cat "$here/jsonschemas.py"; echo "$crds") | sha256sum | cut -c1-12)
schemas=$tools/schemas-k8s-$KUBERNETES_VERSION-keda-$KEDA_VERSION-promop-$PROMETHEUS_OPERATOR_VERSION-$converter_sum

need_go() {
  if ! command -v go >/dev/null; then
    echo "helm/tools.sh: Go is not installed; it builds helm and kubeconform and fetches the API schemas for the chart tests (install Go >= 1.21)" >&2
    exit 3
  fi
  export GOFLAGS="${GOFLAGS:-} -modcacherw" CGO_ENABLED=0
}

module_dir() { # module@version -> its directory in the module cache
  go mod download -json "$1" | "$python" -c 'import json, sys; d = json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error", "no Dir")))'
}

install_tool() { # binary path, package@version, [go install flags]
  [ -x "$1" ] && return 0
  need_go
  echo "go install $2 (once: cached in $(dirname "$1"))" >&2
  GOBIN=$(dirname "$1") go install "${@:3}" "$2"
}

# As helm's own release build does: its version, and the Kubernetes version that
# `helm template` assumes without --kube-version (else v1.20, below the chart's kubeVersion).
kube_minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)
helm_ldflags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in pkg/chartutil pkg/lint/rules; do
  helm_ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$kube_minor"
done
install_tool "$helm" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" -ldflags "$helm_ldflags"
install_tool "$kubeconform" "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
# Prometheus's PromQL parser, for the chart's alert expressions (as `promtool check rules`)
promql_sum=$(cat "$here"/promql-check/{main.go,go.mod,go.sum} | sha256sum | cut -c1-12)
promql_check=$tools/promql-check-$promql_sum/promql-check
if [ ! -x "$promql_check" ]; then
  need_go
  echo "go build helm/promql-check (once: cached in $(dirname "$promql_check"))" >&2
  mkdir -p "$(dirname "$promql_check")"
  (cd "$here/promql-check" && go build -trimpath -o "$promql_check.tmp" . && mv "$promql_check.tmp" "$promql_check")
fi

if [ ! -f "$schemas/.complete" ]; then
  need_go
  "$python" -c 'import yaml' 2>/dev/null || {
    echo "helm/tools.sh: $python has no PyYAML; set PYTHON to the project's venv python" >&2
    exit 3
  }
  echo "preparing JSON schemas (Kubernetes $KUBERNETES_VERSION, KEDA $KEDA_VERSION, prometheus-operator $PROMETHEUS_OPERATOR_VERSION)" >&2
  k8s=$(module_dir "k8s.io/kubernetes@$KUBERNETES_VERSION")
  keda=$(module_dir "github.com/kedacore/keda/v2@$KEDA_VERSION")
  promop=$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")
  rm -rf "$tools"/schemas-*  # older versions of the schemas, and a half-made one
  crd_flags=()
  while IFS=: read -r module path; do
    if [ "$module" = keda ]; then crd_flags+=(--crd "$keda/$path"); else crd_flags+=(--crd "$promop/$path"); fi
  done <<<"$crds"
  "$python" "$here/jsonschemas.py" "$schemas.tmp" \
    --kubernetes "$k8s" \
    "${crd_flags[@]}" \
    --keda-kafka-scaler "$keda/pkg/scalers/kafka_scaler.go" >&2
  touch "$schemas.tmp/.complete"
  rm -rf "$schemas"
  mv "$schemas.tmp" "$schemas"
fi

echo "HELM=$helm"
echo "KUBECONFORM=$kubeconform"
echo "SCHEMA_LOCATION=$schemas/{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}.json"
echo "KEDA_KAFKA_PARAMETERS=$schemas/keda-kafka-parameters.json"
echo "KUBE_VERSION=${KUBERNETES_VERSION#v}"
echo "PROMQL_CHECK=$promql_check"
