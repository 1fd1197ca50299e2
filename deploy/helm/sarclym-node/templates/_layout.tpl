{{/*
The layout: single host (state.db, SQLite) or several hosts (PostgreSQL, RWX volume).
deploy/README.md describes both; "sarclym-node.validate" refuses what cannot work.
*/}}

{{/* "true" when the workers must run on the listener's node; worker.colocateWithListener null:
true with state.db, false with PostgreSQL. */}}
{{- define "sarclym-node.colocate" -}}
{{- $value := .Values.worker.colocateWithListener -}}
{{- if kindIs "invalid" $value -}}
{{- ternary "false" "true" (.Values.postgresql.enabled | default false) -}}
{{- else -}}
{{- ternary "true" "false" $value -}}
{{- end -}}
{{- end -}}

{{/* storage.database_url: postgresql://user@host:port/database, no password (PGPASSWORD). */}}
{{- define "sarclym-node.databaseUrl" -}}
{{- $pg := .Values.postgresql -}}
{{- $name := "^[A-Za-z0-9_][A-Za-z0-9_.-]*$" -}}
{{- $host := required "postgresql.host is required when postgresql.enabled is true (the PostgreSQL server's name or address)" $pg.host -}}
{{- if not (regexMatch "^[A-Za-z0-9.:\\[\\]-]+$" $host) -}}
{{- fail (printf "postgresql.host: expected a host name or an IP address, got %q" $host) -}}
{{- end -}}
{{- if not (regexMatch $name (toString $pg.user)) -}}
{{- fail (printf "postgresql.user: expected letters, digits, '_', '.' or '-', got %q" (toString $pg.user)) -}}
{{- end -}}
{{- if not (regexMatch $name (toString $pg.database)) -}}
{{- fail (printf "postgresql.database: expected letters, digits, '_', '.' or '-', got %q" (toString $pg.database)) -}}
{{- end -}}
{{- printf "postgresql://%s@%s:%d/%s" $pg.user $host (int $pg.port) $pg.database -}}
{{- end -}}

{{/* Environment of every sarclym pod for PostgreSQL: the password from its Secret, sslmode. */}}
{{- define "sarclym-node.postgresqlEnv" -}}
{{- if .Values.postgresql.enabled }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "postgresql.passwordSecret.name is required when postgresql.enabled is true (a Secret holding the PostgreSQL password)" .Values.postgresql.passwordSecret.name }}
      key: {{ .Values.postgresql.passwordSecret.key | default "password" }}
{{- with .Values.postgresql.sslMode }}
- name: PGSSLMODE
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Fails the render, with the values to change, for a layout that cannot work. */}}
{{- define "sarclym-node.validate" -}}
{{- $colocate := eq (include "sarclym-node.colocate" .) "true" -}}
{{- $replicas := int .Values.listener.replicas -}}
{{- if lt $replicas 1 -}}
{{- fail (printf "listener.replicas: expected 1 or more, got %d" $replicas) -}}
{{- end -}}
{{- if not .Values.postgresql.enabled -}}
{{- if not $colocate -}}
{{- fail "worker.colocateWithListener: false needs postgresql.enabled: true. Without PostgreSQL the state is state.db, SQLite in WAL mode on the data volume, and every process that opens it must run on one node (shared memory; not over a network file system). Keep the workers on the listener's node (colocateWithListener: true or null), or put the state on PostgreSQL (postgresql.enabled, host, passwordSecret)." -}}
{{- end -}}
{{- if gt $replicas 1 -}}
{{- fail (printf "listener.replicas: %d needs postgresql.enabled: true. Without PostgreSQL the state is state.db (SQLite), which one listener host writes: keep listener.replicas 1, or put the state on PostgreSQL (postgresql.enabled, host, passwordSecret)." $replicas) -}}
{{- end -}}
{{- else -}}
{{- $_ := include "sarclym-node.databaseUrl" . -}}
{{- $_ := include "sarclym-node.postgresqlEnv" . -}}
{{- if and (not $colocate) (not .Values.persistence.existingClaim) (not (has "ReadWriteMany" .Values.persistence.accessModes)) -}}
{{- fail (printf "persistence.accessModes: %v cannot be mounted by pods on several nodes: workers off the listener's node (worker.colocateWithListener false) need ReadWriteMany, with a storageClassName that provides it" .Values.persistence.accessModes) -}}
{{- end -}}
{{- end -}}
{{- end -}}
