{{/*
Names and labels shared by every template.
*/}}

{{/* The chart name, overridable with nameOverride. */}}
{{- define "tao-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of every resource: fullnameOverride, else "<release>-<name>", or the release name alone when it
already contains the chart name. Truncated to 63 characters (a DNS label).
*/}}
{{- define "tao-operator.fullname" -}}
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

{{/* "<chart>-<version>", for the helm.sh/chart label. */}}
{{- define "tao-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of a release (a Deployment's selector is immutable). The component keeps
the operator's pods apart from the children it creates, which carry app.kubernetes.io/name: tao-operator too.
*/}}
{{- define "tao-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tao-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of every resource of the chart. */}}
{{- define "tao-operator.labels" -}}
helm.sh/chart: {{ include "tao-operator.chart" . }}
{{ include "tao-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tao-operator
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "tao-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tao-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
"repository:tag" of one of .Values.images, the tag defaulting to the chart's appVersion.
Usage: include "tao-operator.image" (list .Values.images.trainer .)
*/}}
{{- define "tao-operator.image" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
