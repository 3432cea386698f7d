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

{{/*
Whether a processor runs: "true" or "". It is enabled and, if it only finishes the front
door's work (withServe: the outputs processor), serve is enabled too. Call with
(dict "root" $ "processor" $p).
*/}}
{{- define "promptmill.processor.on" -}}
{{- if and .processor.enabled (or (not .processor.withServe) .root.Values.serve.enabled) }}true{{ end }}
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
{{- if include "promptmill.processor.on" (dict "root" $ "processor" $p) }}
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
{{- include "promptmill.validate.serve" . }}
{{- end }}

{{/* Secrets of every container, by reference: the model's API key (with "modelKey"), the
Redis URL and the Kafka SASL login. Call with (dict "root" $ "modelKey" true|false). */}}
{{- define "promptmill.secretEnv" -}}
{{- $root := .root }}
{{- with $root.Values.model.apiKey }}
{{- if and $.modelKey .existingSecret }}
- name: OPENAI_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- with $root.Values.redis }}
{{- if .existingSecret }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .urlKey }}
{{- end }}
{{- end }}
{{- if include "promptmill.kafka.sasl" $root }}
{{- with $root.Values.kafka.sasl }}
{{- if .usernameKey }}
- name: PROMPTMILL_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .usernameKey }}
{{- end }}
- name: PROMPTMILL_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .passwordKey }}
{{- end }}
{{- end }}
{{- end }}

{{/* The blob store (PROMPTMILL_BLOB_URL) of serve and the outputs worker. */}}
{{- define "promptmill.blobStore.s3" -}}
{{- if hasPrefix "s3://" .Values.blobStore.url }}true{{ end }}
{{- end }}

{{/* "true" when serve or a processor that needs the blob store (needsBlobStore) runs. */}}
{{- define "promptmill.blobStore.used" -}}
{{- $used := .Values.serve.enabled }}
{{- range $name, $p := .Values.processors }}
{{- if and $p.needsBlobStore (include "promptmill.processor.on" (dict "root" $ "processor" $p)) }}
{{- $used = true }}
{{- end }}
{{- end }}
{{- if $used }}true{{ end }}
{{- end }}

{{/* The S3 access key pair, by reference (none: the pod's own identity, e.g. IRSA). */}}
{{- define "promptmill.blobStore.env" -}}
{{- with .Values.blobStore.s3 }}
{{- if and .existingSecret (include "promptmill.blobStore.s3" $) }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .secretAccessKeyKey }}
{{- end }}
{{- end }}
{{- end }}

{{/* The shared claim mounted at the blob directory: a volumeMount, and its volume. */}}
{{- define "promptmill.blobStore.volumeMount" -}}
{{- if and (not (include "promptmill.blobStore.s3" .)) .Values.blobStore.existingClaim }}
- name: blobs
  mountPath: {{ .Values.blobStore.url }}
  {{- with .Values.blobStore.subPath }}
  subPath: {{ . }}
  {{- end }}
{{- end }}
{{- end }}

{{- define "promptmill.blobStore.volume" -}}
{{- if and (not (include "promptmill.blobStore.s3" .)) .Values.blobStore.existingClaim }}
- name: blobs
  persistentVolumeClaim:
    claimName: {{ .Values.blobStore.existingClaim }}
{{- end }}
{{- end }}

{{/* The front door's names, labels and scheme. */}}
{{- define "promptmill.serve.fullname" -}}
{{- include "promptmill.processor.fullname" (dict "root" . "name" "serve") }}
{{- end }}

{{- define "promptmill.serve.labels" -}}
{{ include "promptmill.processor.labels" (dict "root" . "name" "serve") }}
{{- end }}

{{- define "promptmill.serve.selectorLabels" -}}
{{ include "promptmill.processor.selectorLabels" (dict "root" . "name" "serve") }}
{{- end }}

{{/* "true" when serve speaks HTTPS (a certificate Secret is referenced). */}}
{{- define "promptmill.serve.tls" -}}
{{- if .Values.serve.tls.existingSecret }}true{{ end }}
{{- end }}

{{- define "promptmill.serve.tlsDir" -}}
/etc/promptmill/serve-tls
{{- end }}

{{- define "promptmill.serve.servicePort" -}}
{{- if .Values.serve.service.port }}{{ .Values.serve.service.port }}{{ else if include "promptmill.serve.tls" . }}443{{ else }}80{{ end }}
{{- end }}

{{/* Replicas of serve, for messages: "N replicas" or "an HPA's min..max replicas". */}}
{{- define "promptmill.serve.replicasText" -}}
{{- with .Values.serve }}
{{- if .autoscaling.enabled }}{{ .autoscaling.minReplicas }}..{{ .autoscaling.maxReplicas }} replicas by its HPA{{ else }}{{ .replicas }} {{ ternary "replica" "replicas" (eq (int .replicas) 1) }}{{ end }}
{{- end }}
{{- end }}

{{/* The checks of serve and the blob store; part of promptmill.validate. */}}
{{- define "promptmill.validate.serve" -}}
{{- $b := .Values.blobStore }}
{{- $s3 := include "promptmill.blobStore.s3" . }}
{{- if and $s3 $b.existingClaim }}
{{- fail (printf "blobStore.existingClaim (%s) is for a directory, but blobStore.url is %s: drop one" $b.existingClaim $b.url) }}
{{- end }}
{{- if and (not $s3) (or $b.s3.existingSecret $b.s3.endpointUrl $b.s3.region) }}
{{- fail (printf "blobStore.s3.* is set, but blobStore.url (%s) is not an s3:// URL" $b.url) }}
{{- end }}
{{- if .Values.serve.enabled }}
{{- $outputs := false }}
{{- range $name, $p := .Values.processors }}
{{- if and (eq $name "outputs") (include "promptmill.processor.on" (dict "root" $ "processor" $p)) }}
{{- $outputs = true }}
{{- end }}
{{- end }}
{{- if not $outputs }}
{{- fail "serve needs processors.outputs.enabled: the outputs worker writes its batches' output files" }}
{{- end }}
{{- if not (or .Values.redis.url .Values.redis.existingSecret) }}
{{- fail "serve needs Redis (API keys, files, batches): set redis.url or redis.existingSecret" }}
{{- end }}
{{- with .Values.serve.autoscaling }}
{{- if and .enabled (gt (int .minReplicas) (int .maxReplicas)) }}
{{- fail (printf "serve.autoscaling.minReplicas (%v) is above its maxReplicas (%v)" .minReplicas .maxReplicas) }}
{{- end }}
{{- end }}
{{- if le (int .Values.serve.terminationGracePeriodSeconds) (int .Values.serve.preStopSleepSeconds) }}
{{- fail (printf "serve.terminationGracePeriodSeconds (%v) must be greater than serve.preStopSleepSeconds (%v), and leave time for in-flight requests" .Values.serve.terminationGracePeriodSeconds .Values.serve.preStopSleepSeconds) }}
{{- end }}
{{- end }}
{{- if and (include "promptmill.blobStore.used" .) (not $s3) (not $b.existingClaim) }}
{{- $serve := ternary (printf "serve (%s)" (include "promptmill.serve.replicasText" .)) "serve (wherever it runs)" .Values.serve.enabled }}
{{- fail (printf "blobStore.url is the directory %s and no blobStore.existingClaim shares it: %s stores the uploaded files and the outputs worker writes the output files, in separate pods, and every pod must see the same files, which a directory of its own (an emptyDir) would not. Set blobStore.existingClaim to a PersistentVolumeClaim (ReadWriteMany if the pods may run on several nodes), mounted at that directory in every serve and outputs pod, or set blobStore.url to s3://bucket/prefix" $b.url $serve) }}
{{- end }}
{{- end }}
