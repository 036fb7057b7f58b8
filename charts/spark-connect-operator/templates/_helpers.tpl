{{- define "sco.name" -}}spark-connect-operator{{- end -}}
{{- define "sco.fullname" -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}-spark-connect-operator{{- end -}}
{{- define "sco.labels" -}}
app.kubernetes.io/name: {{ include "sco.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "sco.selector" -}}
app.kubernetes.io/name: {{ include "sco.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
