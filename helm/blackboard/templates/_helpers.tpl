{{- define "bb.name" -}}{{ .Release.Name }}-blackboard{{- end -}}

{{- define "bb.labels" -}}
app.kubernetes.io/name: blackboard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "bb.natsUrl" -}}
{{- if .Values.nats.enabled -}}nats://{{ .Release.Name }}-nats:4222{{- else -}}{{ required "externalNats.url is required when nats.enabled is false" .Values.externalNats.url }}{{- end -}}
{{- end -}}

{{- define "bb.monitoring" -}}
{{- if .Values.nats.enabled -}}{{ .Release.Name }}-nats.{{ .Release.Namespace }}.svc.cluster.local:8222{{- else -}}{{ .Values.externalNats.monitoringEndpoint }}{{- end -}}
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
