{{/* Names, labels and the checks that stop a broken configuration from rendering. */}}

{{- define "promptmill.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "promptmill.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "promptmill.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "promptmill.labels" -}}
helm.sh/chart: {{ include "promptmill.chart" . }}
{{ include "promptmill.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: promptmill
{{- end }}

{{- define "promptmill.selectorLabels" -}}
app.kubernetes.io/name: {{ include "promptmill.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Per-processor names and labels; call with (dict "root" $ "name" $name). */}}
{{- define "promptmill.processor.fullname" -}}
{{- printf "%s-%s" (include "promptmill.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "promptmill.processor.labels" -}}
{{ include "promptmill.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "promptmill.processor.selectorLabels" -}}
{{ include "promptmill.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "promptmill.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "promptmill.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "promptmill.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Kafka security as booleans: "true" or "". */}}
{{- define "promptmill.kafka.sasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{- define "promptmill.kafka.tls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{/* Mount point of the Kafka TLS secret's files. */}}
{{- define "promptmill.kafka.tlsDir" -}}
/etc/promptmill/kafka-tls
{{- end }}

{{/*
The processor's consumer group and topics, and its useful maximum of replicas: the group's
partitions are assigned over all of its topics, so more consumers than the sum of their
partitions would sit idle. Call with (dict "root" $ "processor" $p).
*/}}
{{- define "promptmill.processor.group" -}}
{{- printf "%s.%s" .root.Values.topics.prefix .processor.group }}
{{- end }}

{{- define "promptmill.processor.partitions" -}}
{{- $total := 0 }}
{{- range .processor.topics }}
{{- $total = add $total (index $.root.Values.topics.partitions .) }}
{{- end }}
{{- $total }}
{{- end }}

{{- define "promptmill.processor.maxReplicas" -}}
{{- if .processor.maxReplicas }}{{ .processor.maxReplicas }}{{ else }}{{ include "promptmill.processor.partitions" . }}{{ end }}
{{- end }}

{{/* How a processor scales: "keda", "hpa" or "" (fixed replicas). */}}
{{- define "promptmill.processor.scaler" -}}
{{- if .processor.autoscale }}
{{- if .root.Values.keda.enabled }}keda{{ else if .root.Values.autoscaling.enabled }}hpa{{ end }}
{{- end }}
{{- end }}

{{/* Every check that must hold before anything renders; included once by the ConfigMap. */}}
{{- define "promptmill.validate" -}}
{{- $w := .Values.worker }}
{{- if le (float64 $w.terminationGracePeriodSeconds) (float64 $w.drainSeconds) }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%v) must be greater than worker.drainSeconds (%v): Kubernetes kills the pod at the end of the grace period, in the middle of the drain; leave ~10 s more for the final commit" $w.terminationGracePeriodSeconds $w.drainSeconds) }}
{{- end }}
{{- if not .Values.kafka.bootstrapServers }}
{{- fail "kafka.bootstrapServers is required" }}
{{- end }}
{{- if not .Values.model.baseUrl }}
{{- fail "model.baseUrl is required (the worker has no local model in a cluster)" }}
{{- end }}
{{- if include "promptmill.kafka.sasl" . }}
{{- if not .Values.kafka.sasl.existingSecret }}
{{- fail (printf "kafka.sasl.existingSecret is required with kafka.securityProtocol %s: the Secret that holds the SASL password" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if not (or .Values.kafka.sasl.username .Values.kafka.sasl.usernameKey) }}
{{- fail "kafka.sasl.username or kafka.sasl.usernameKey (a key of kafka.sasl.existingSecret) is required with SASL" }}
{{- end }}
{{- end }}
{{- with .Values.kafka.tls }}
{{- if ne (empty .certKey) (empty .keyKey) }}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey go together (mutual TLS): set both or neither" }}
{{- end }}
{{- if and .existingSecret (not (include "promptmill.kafka.tls" $)) }}
{{- fail (printf "kafka.tls.existingSecret is set but kafka.securityProtocol is %s; use SSL or SASL_SSL" $.Values.kafka.securityProtocol) }}
{{- end }}
{{- end }}
{{- range $name, $p := .Values.processors }}
{{- if $p.enabled }}
{{- range $p.topics }}
{{- if not (hasKey $.Values.topics.partitions .) }}
{{- fail (printf "processors.%s.topics: %q has no entry in topics.partitions" $name .) }}
{{- end }}
{{- end }}
{{- if and $p.needsRedis (not (or $.Values.redis.url $.Values.redis.existingSecret)) }}
{{- fail (printf "processors.%s needs Redis: set redis.url or redis.existingSecret" $name) }}
{{- end }}
{{- $ctx := dict "root" $ "processor" $p }}
{{- if gt (int $p.minReplicas) (int (include "promptmill.processor.maxReplicas" $ctx)) }}
{{- fail (printf "processors.%s.minReplicas (%v) is above its maxReplicas (%s)" $name $p.minReplicas (include "promptmill.processor.maxReplicas" $ctx)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
