{{/* Names and labels of the sarclym-node chart. */}}

{{- define "sarclym-node.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sarclym-node.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sarclym-node.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "sarclym-node.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels; call with (dict "root" $ "component" "listener"). */}}
{{- define "sarclym-node.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sarclym-node.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sarclym-node.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "sarclym-node.workerImage" -}}
{{- $repository := default .Values.image.repository .Values.worker.image.repository -}}
{{- $base := default .Chart.AppVersion .Values.image.tag -}}
{{- $tag := ternary (printf "%s-cuda" $base) $base (gt (int .Values.worker.gpu) 0) -}}
{{- printf "%s:%s" $repository (default $tag .Values.worker.image.tag) -}}
{{- end -}}

{{/* "true" when the chart runs a Redis pod; redis.enabled null: only without PostgreSQL. */}}
{{- define "sarclym-node.redisEnabled" -}}
{{- $value := .Values.redis.enabled -}}
{{- if kindIs "invalid" $value -}}
{{- ternary "false" "true" (.Values.postgresql.enabled | default false) -}}
{{- else -}}
{{- ternary "true" "false" $value -}}
{{- end -}}
{{- end -}}

{{/* service.queue_url: the chart's Redis, else redis.externalUrl, else (PostgreSQL) empty: the
queue in the state's database. */}}
{{- define "sarclym-node.redisUrl" -}}
{{- if eq (include "sarclym-node.redisEnabled" .) "true" -}}
{{- printf "redis://%s-redis:6379/0" (include "sarclym-node.fullname" .) -}}
{{- else if .Values.redis.externalUrl -}}
{{- .Values.redis.externalUrl -}}
{{- else if not .Values.postgresql.enabled -}}
{{- fail "redis.externalUrl is required when redis.enabled is false without PostgreSQL (the queue needs Redis, or the state and queue on PostgreSQL: postgresql.enabled)" -}}
{{- end -}}
{{- end -}}

{{- define "sarclym-node.claimName" -}}
{{- default (printf "%s-data" (include "sarclym-node.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* Environment, volumes and mounts shared by the listener and the workers. */}}
{{- define "sarclym-node.env" -}}
- name: SARCLYM_CONFIG
  value: /etc/sarclym/sarclym.yaml
{{- include "sarclym-node.postgresqlEnv" . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "sarclym-node.volumeMounts" -}}
- name: config
  mountPath: /etc/sarclym
  readOnly: true
- name: data
  mountPath: /data
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "sarclym-node.volumes" -}}
- name: config
  configMap:
    name: {{ include "sarclym-node.fullname" . }}-config
- name: data
  persistentVolumeClaim:
    claimName: {{ include "sarclym-node.claimName" . }}
- name: tmp
  emptyDir: {}
{{- end -}}
