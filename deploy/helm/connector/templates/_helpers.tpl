{{- define "connector.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "connector.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "connector.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* ConfigMap keys cannot hold "/": policies/a.json is stored as policies__a.json. */}}
{{- define "connector.fileKey" -}}
{{- . | replace "/" "__" -}}
{{- end -}}

{{- define "connector.secretName" -}}
{{- .Values.participant.existingSecret | default (printf "%s-keys" (include "connector.fullname" .)) -}}
{{- end -}}

{{/* The connector's state is in PostgreSQL (storage.postgres): replicas may share it. */}}
{{- define "connector.postgres" -}}
{{- if or .Values.storage.postgres.dsn .Values.storage.postgres.existingSecret -}}true{{- end -}}
{{- end -}}

{{- define "connector.stateDsnSecret" -}}
{{- .Values.storage.postgres.existingSecret | default (printf "%s-state-dsn" (include "connector.fullname" .)) -}}
{{- end -}}

{{/* What a render refuses, each with the value to set (deploy/README.md, "Kubernetes"). */}}
{{- define "connector.validate" -}}
{{- $replicas := int .Values.replicaCount -}}
{{- $toml := index .Values.participant.files "connector.toml" | default "" -}}
{{- if and (gt $replicas 1) (not (include "connector.postgres" .)) -}}
{{- fail (printf "replicaCount=%d needs the connector's state in PostgreSQL, which the replicas share (SQLite has one writer): set storage.postgres.dsn, or storage.postgres.existingSecret naming a Secret with the DSN under the key state.dsn" $replicas) -}}
{{- end -}}
{{- if and (include "connector.postgres" .) (not (regexMatch "(?m)^\\s*postgres_dsn_file\\s*=\\s*\"keys/state.dsn\"" $toml)) -}}
{{- fail "storage.postgres is set: participant.files.connector.toml needs [storage] postgres_dsn_file = \"keys/state.dsn\" (the file the chart puts the DSN in)" -}}
{{- end -}}
{{- if and (gt $replicas 1) (not .Values.participant.existingSecret) (not (index .Values.participant.keys "data-token.secret")) -}}
{{- fail (printf "replicaCount=%d: the replicas must share keys/data-token.secret (each pod would make its own, and a data token refreshed on one would fail on another): set participant.keys.data-token\\.secret, e.g. to 32 random bytes in base64" $replicas) -}}
{{- end -}}
{{- if and (gt $replicas 1) .Values.podDisruptionBudget.enabled (ge (int .Values.podDisruptionBudget.minAvailable) $replicas) -}}
{{- fail (printf "podDisruptionBudget.minAvailable=%d with replicaCount=%d would block every voluntary eviction (node drains): choose fewer than the replicas" (int .Values.podDisruptionBudget.minAvailable) $replicas) -}}
{{- end -}}
{{- end -}}
