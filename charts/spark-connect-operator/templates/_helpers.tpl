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
{{- define "sco.gatewaySelector" -}}
app.kubernetes.io/name: {{ include "sco.name" . }}-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- /* Whole seconds of a Go duration written as <n>s, <n>m or <n>h. */ -}}
{{- define "sco.seconds" -}}
{{- $d := . | toString -}}
{{- if hasSuffix "h" $d -}}{{ mul (trimSuffix "h" $d | int) 3600 }}
{{- else if hasSuffix "m" $d -}}{{ mul (trimSuffix "m" $d | int) 60 }}
{{- else -}}{{ trimSuffix "s" $d | int }}
{{- end -}}
{{- end -}}
