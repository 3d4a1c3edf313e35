{{/* Names, labels, images and shared pod settings used by every template. */}}

{{- define "peerbot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "peerbot.fullname" -}}
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

{{- define "peerbot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. helm.sh/chart and the version change on upgrade, so they are never in a selector. */}}
{{- define "peerbot.labels" -}}
helm.sh/chart: {{ include "peerbot.chart" . }}
{{ include "peerbot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: peerbot
{{- end }}

{{- define "peerbot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "peerbot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: (dict "ctx" $ "component" "dispatcher"). */}}
{{- define "peerbot.componentLabels" -}}
{{ include "peerbot.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "peerbot.componentSelectorLabels" -}}
{{ include "peerbot.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The worker pods' labels, as operator/jobs.py sets them on every Job it creates. Fixed, not per release:
the NetworkPolicy for workers selects on exactly these.
*/}}
{{- define "peerbot.workerPodSelectorLabels" -}}
app.kubernetes.io/name: peerbot
app.kubernetes.io/component: worker
app.kubernetes.io/managed-by: peerbot-operator
{{- end }}

{{/* Component names. */}}
{{- define "peerbot.dispatcher.fullname" -}}
{{- printf "%s-dispatcher" (include "peerbot.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "peerbot.operator.fullname" -}}
{{- printf "%s-operator" (include "peerbot.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "peerbot.worker.fullname" -}}
{{- printf "%s-worker" (include "peerbot.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "peerbot.dispatcher.serviceAccountName" -}}
{{- default (include "peerbot.dispatcher.fullname" .) .Values.dispatcher.serviceAccount.name }}
{{- end }}

{{- define "peerbot.operator.serviceAccountName" -}}
{{- default (include "peerbot.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- end }}

{{- define "peerbot.worker.serviceAccountName" -}}
{{- default (include "peerbot.worker.fullname" .) .Values.worker.serviceAccount.name }}
{{- end }}

{{/* The Secret every part reads its tokens from: yours (secrets.existingSecret) or the chart's. */}}
{{- define "peerbot.secretName" -}}
{{- default (printf "%s-secrets" (include "peerbot.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{/* An image reference: (dict "image" .Values.dispatcher.image "ctx" $). A digest wins over the tag. */}}
{{- define "peerbot.image" -}}
{{- $registry := .ctx.Values.global.imageRegistry | default .image.registry -}}
{{- $repository := .image.repository -}}
{{- if $registry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" $registry) $repository -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (.image.tag | default .ctx.Chart.AppVersion | toString) -}}
{{- end -}}
{{- end }}

{{/* The pod-level security context of the restricted Pod Security Standard, with the images' fixed uid. */}}
{{- define "peerbot.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The container-level security context of the restricted Pod Security Standard. */}}
{{- define "peerbot.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Environment every part shares. */}}
{{- define "peerbot.commonConfig" -}}
LOG_LEVEL: {{ .Values.logging.level | quote }}
LOG_FORMAT: {{ .Values.logging.format | quote }}
PEERBOT_MAINTENANCE: {{ .Values.maintenance.enabled | toString | quote }}
SLACK_TRIGGER_PHRASE: {{ .Values.slack.triggerPhrase | quote }}
{{- with .Values.slack.apiUrl }}
SLACK_API_URL: {{ . | quote }}
{{- end }}
{{- end }}

{{/* The secret environment variable NAME from KEY of the Secret: (dict "ctx" $ "name" "X" "key" "y"). */}}
{{- define "peerbot.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "peerbot.secretName" .ctx }}
      key: {{ .key }}
{{- end }}

{{/* Whether the chart's own Secret is missing a token it needs: used by NOTES.txt to warn. */}}
{{- define "peerbot.missingSecrets" -}}
{{- if not .Values.secrets.existingSecret -}}
{{- $missing := list -}}
{{- if not .Values.secrets.slackBotToken }}{{ $missing = append $missing "secrets.slackBotToken" }}{{ end -}}
{{- if and (eq .Values.slack.mode "socket") (not .Values.secrets.slackAppToken) }}{{ $missing = append $missing "secrets.slackAppToken" }}{{ end -}}
{{- if and (eq .Values.slack.mode "http") (not .Values.secrets.slackSigningSecret) }}{{ $missing = append $missing "secrets.slackSigningSecret" }}{{ end -}}
{{- if not .Values.secrets.anthropicApiKey }}{{ $missing = append $missing "secrets.anthropicApiKey" }}{{ end -}}
{{- if not .Values.secrets.githubToken }}{{ $missing = append $missing "secrets.githubToken" }}{{ end -}}
{{- if and .Values.dispatcher.redis.enabled (not .Values.secrets.redisUrl) }}{{ $missing = append $missing "secrets.redisUrl" }}{{ end -}}
{{- join ", " $missing -}}
{{- end -}}
{{- end }}
