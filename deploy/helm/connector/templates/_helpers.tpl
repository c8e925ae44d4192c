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
