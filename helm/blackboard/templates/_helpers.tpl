{{- define "bb.name" -}}{{ .Release.Name }}-blackboard{{- end -}}

{{- define "bb.labels" -}}
app.kubernetes.io/name: blackboard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The NATS subchart's fullname, computed as its "nats.fullname" does
(nats-io/k8s helm/charts/nats/templates/_helpers.tpl): its Service, its
StatefulSet and its pods (<fullname>-0, -1, ...) are named after it. */}}
{{- define "bb.natsFullname" -}}
{{- if .Values.nats.fullnameOverride -}}
{{- .Values.nats.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "nats" .Values.nats.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "bb.natsUrl" -}}
{{- if .Values.nats.enabled -}}nats://{{ include "bb.natsFullname" . }}:4222{{- else -}}{{ required "externalNats.url is required when nats.enabled is false" .Values.externalNats.url }}{{- end -}}
{{- end -}}

{{/* Where KEDA's nats-jetstream scaler reads /jsz and /varz. With the NATS
subchart: its headless Service, the only one that exposes the monitoring port
by default, and the StatefulSet's DNS domain. On a cluster the scaler asks
the consumer's leader at "<leader server_name>.<this endpoint>", which is the
leader pod's DNS name here (server_name = pod name, the subchart's default). */}}
{{- define "bb.monitoring" -}}
{{- if .Values.nats.enabled -}}
{{- $headless := dig "headlessService" "name" "" .Values.nats | default (printf "%s-headless" (include "bb.natsFullname" .)) -}}
{{- $domain := dig "config" "cluster" "routeURLs" "k8sClusterDomain" "cluster.local" .Values.nats -}}
{{- $port := dig "config" "monitor" "port" 8222 .Values.nats -}}
{{- printf "%s.%s.svc.%s:%v" $headless .Release.Namespace $domain $port -}}
{{- else -}}
{{- .Values.externalNats.monitoringEndpoint -}}
{{- end -}}
{{- end -}}

{{- define "bb.apiKeysSecret" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "bb.name" .)) -}}
{{- end -}}

{{- define "bb.natsAuthSecret" -}}
{{- .Values.natsAuth.existingSecret | default "blackboard-nats-auth" -}}
{{- end -}}

{{/* The environment every process shares; "role" picks its NATS user. */}}
{{- define "bb.env" -}}
- name: BB_NATS_URL
  value: {{ include "bb.natsUrl" .root | quote }}
- name: BB_NATS_REPLICAS
  value: {{ .root.Values.streams.replicas | quote }}
- name: BB_HEALTH_PORT
  value: {{ .root.Values.healthPort | quote }}
- name: BB_DATA_DIR
  value: /data
{{- if .root.Values.scripted }}
- name: BB_SCRIPTED
  value: "1"
{{- end }}
- name: BB_FRONTIER_MODEL
  value: {{ .root.Values.frontierModel | quote }}
- name: BB_LOCAL_MODEL
  value: {{ .root.Values.local.model | quote }}
- name: BB_LOCAL_BASE_URL
  value: {{ if .root.Values.vllm.enabled }}{{ printf "http://%s-vllm:8000/v1" (include "bb.name" .root) | quote }}{{ else }}{{ .root.Values.local.baseUrl | quote }}{{ end }}
{{- if .root.Values.natsAuth.enabled }}
- name: BB_NATS_USER
  value: {{ .role | quote }}
- name: BB_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "bb.natsAuthSecret" .root }}
      key: {{ .role }}
{{- end }}
{{- if .keys }}
- name: ANTHROPIC_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "bb.apiKeysSecret" .root }}
      key: anthropic
      optional: true
- name: OPENAI_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "bb.apiKeysSecret" .root }}
      key: openai
      optional: true
{{- end }}
{{- end -}}

{{- define "bb.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: health}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: health}
  periodSeconds: 5
  failureThreshold: 2
{{- end -}}

{{- define "bb.securityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: ["ALL"]}
{{- end -}}

{{/* Spread a component's pods over nodes (scheduling.spread: soft, hard or off):
one node's loss then takes at most one scheduler, and not a whole lane. */}}
{{- define "bb.spread" -}}
{{- $mode := .root.Values.scheduling.spread -}}
{{- if ne $mode "off" }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: {{ if eq $mode "hard" }}DoNotSchedule{{ else }}ScheduleAnyway{{ end }}
    labelSelector:
      matchLabels: {{- toYaml .labels | nindent 8 }}
{{- end }}
{{- end -}}
