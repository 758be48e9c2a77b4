{{/* Names and labels shared by the templates. */}}
{{- define "continuum.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "continuum.fullname" -}}
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

{{- define "continuum.selectorLabels" -}}
app.kubernetes.io/name: {{ include "continuum.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "continuum.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "continuum.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: control-plane
{{- end }}

{{- define "continuum.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "continuum.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "continuum.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "continuum.leaseName" -}}
{{- default (printf "%s-leader" (include "continuum.fullname" .)) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "continuum.claimName" -}}
{{- default (printf "%s-state" (include "continuum.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{- define "continuum.scheme" -}}
{{- if .Values.api.tls.existingSecret }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{/* Fails the render on values that cannot work. */}}
{{- define "continuum.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.database.existingSecret) }}
{{- fail "replicaCount > 1 needs a shared database: set database.existingSecret (a Secret with the PostgreSQL URL); SQLite serves one replica only" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (gt (int .Values.replicaCount) 1) (ge (int .Values.podDisruptionBudget.minAvailable) (int .Values.replicaCount)) }}
{{- fail "podDisruptionBudget.minAvailable must be below replicaCount, or no node could ever be drained" }}
{{- end }}
{{- end }}

{{/* The container env of the server and of the migration Job. */}}
{{- define "continuum.env" -}}
- name: CONTINUUM_STATE_DIR
  value: /var/lib/continuum
{{- if .Values.database.existingSecret }}
- name: CONTINUUM_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.urlKey }}
{{- end }}
{{- if .Values.sealing.existingSecret }}
- name: CONTINUUM_SEALING_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.sealing.existingSecret }}
      key: {{ .Values.sealing.keysKey }}
{{- end }}
{{- if .Values.auth.existingSecret }}
- name: CONTINUUM_AUTH_KEY_FILE
  value: /etc/continuum/auth/{{ .Values.auth.keyKey }}
{{- end }}
{{- range $k, $v := .Values.env }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
