{{/* Chart name, cut to the 63 characters a label value allows. */}}
{{- define "diffusion-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name: the release name if it contains the chart name, else
<release>-diffusion-operator; fullnameOverride replaces it. */}}
{{- define "diffusion-operator.fullname" -}}
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

{{- define "diffusion-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "diffusion-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "diffusion-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "diffusion-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: diffusion-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "diffusion-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "diffusion-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "diffusion-operator.workerServiceAccountName" -}}
{{- default (printf "%s-worker" (include "diffusion-operator.fullname" .)) .Values.workerServiceAccount.name }}
{{- end }}

{{- define "diffusion-operator.clusterScoped" -}}
{{- if eq .Values.rbac.scope "cluster" }}true{{ end }}
{{- end }}

{{/* Namespaces the operator watches in namespaced scope: the release namespace first. */}}
{{- define "diffusion-operator.watchNamespaces" -}}
{{- prepend .Values.rbac.watchNamespaces .Release.Namespace | uniq | join "," }}
{{- end }}

{{- define "diffusion-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The operator's API access, the same in a Role or a ClusterRole. Nothing on Secrets (worker pods
reference them by name; the operator never reads them) and no wildcards. Passes read the watch
caches (list + watch) instead of the API; the writes are below. Leader election's Lease has its
own Role (rbac.yaml).
*/}}
{{- define "diffusion-operator.rules" -}}
# Jobs are cached (a change triggers a pass); deleted at their TTL.
- apiGroups: ["diffusion.dev"]
  resources: ["diffusiontrainingjobs"]
  verbs: ["list", "watch", "delete"]
- apiGroups: ["diffusion.dev"]
  resources: ["diffusiontrainingjobs/status"]
  verbs: ["patch"]
# Children carry blockOwnerDeletion; clusters with OwnerReferencesPermissionEnforcement require this.
- apiGroups: ["diffusion.dev"]
  resources: ["diffusiontrainingjobs/finalizers"]
  verbs: ["update"]
# One Indexed Job per attempt: cached (a change triggers a pass), suspended/resumed by patch,
# read when its name is taken (ours from a retried pass, or a deleted namesake's).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Worker pods are cached (phase, exit codes, scheduling); a change triggers a pass. A worker
# still terminating on a NotReady or deleted node past failurePolicy.podTerminationTimeoutSeconds
# is force-deleted, so that the next attempt can start.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "delete"]
# The rendered trainer config and the headless rendezvous Service: cached (only the operator's,
# by label), so a pass sees whether they exist without a read.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create"]
# One Event per job transition.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
"true" when a monitoring.coreos.com/v1 object of this kind should render: the cluster serves
the kind (Helm lists group/version/Kind for a live cluster; `helm template` needs
--api-versions monitoring.coreos.com/v1/<Kind>), or monitoring.force. Call with (list . "Kind").
*/}}
{{- define "diffusion-operator.servesMonitoringKind" -}}
{{- $root := index . 0 -}}
{{- $gvk := printf "monitoring.coreos.com/v1/%s" (index . 1) -}}
{{- if or $root.Values.monitoring.force ($root.Capabilities.APIVersions.Has $gvk) -}}true{{- end -}}
{{- end }}
