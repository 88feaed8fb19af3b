{{/* Names, labels and small helpers shared by every template. */}}

{{- define "agentpool-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agentpool-operator.fullname" -}}
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

{{- define "agentpool-operator.metricsApiName" -}}
{{- printf "%s-metrics-api" (include "agentpool-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agentpool-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "agentpool-operator.labels" -}}
helm.sh/chart: {{ include "agentpool-operator.chart" . }}
app.kubernetes.io/name: {{ include "agentpool-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentpool
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels on pods, besides their selector labels. */}}
{{- define "agentpool-operator.podLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: agentpool
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The immutable subset that selects the operator's pods. */}}
{{- define "agentpool-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentpool-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "agentpool-operator.metricsApiSelectorLabels" -}}
app.kubernetes.io/name: {{ include "agentpool-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: metrics-api
{{- end }}

{{- define "agentpool-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agentpool-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "agentpool-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Whether the cluster serves a Prometheus Operator kind: monitoring.coreos.com/v1/<Kind>. */}}
{{- define "agentpool-operator.hasMonitoringKind" -}}
{{- if .root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" .kind) }}true{{ end }}
{{- end }}

{{/* The namespaces the operator serves, as a JSON list: operator.watchNamespaces, or the
release namespace alone; [] with operator.watchAllNamespaces (every namespace). Only there
may the operator write workloads, pods or Secrets (README: RBAC). */}}
{{- define "agentpool-operator.servedNamespaces" -}}
{{- if .Values.operator.watchAllNamespaces }}
{{- list | toJson }}
{{- else }}
{{- default (list .Release.Namespace) .Values.operator.watchNamespaces | toJson }}
{{- end }}
{{- end }}

{{/* Namespaces the worker pods live in, for the PodMonitor. */}}
{{- define "agentpool-operator.podNamespaces" -}}
{{- default (include "agentpool-operator.servedNamespaces" . | fromJsonArray) .Values.podMonitor.namespaces | toJson }}
{{- end }}

{{/* The Secret the operator publishes the served pools' queues in for the metrics API
(operator/agentpool_operator/queuedir.py), in the release namespace. */}}
{{- define "agentpool-operator.queueDirectoryName" -}}
{{- printf "%s-queues" (include "agentpool-operator.metricsApiName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The operator's permissions in each namespace it serves: one rule per kind, only the verbs
it uses. Server-side apply is a PATCH that creates a missing object, which the API server
authorizes as create too. Deletes prune children a pool no longer wants. Pods: list for the
crash-loop check and the deletion-cost pass, patch for the deletion-cost annotation
(operator/agentpool_operator/deletioncost.py). */}}
{{- define "agentpool-operator.operatorRules" -}}
- apiGroups: ["agentpool.dev"]
  resources: ["agentpools"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["agentpool.dev"]
  resources: ["agentpools/status"]
  verbs: ["patch"]
- apiGroups: ["agentpool.dev"]
  resources: ["agentbudgets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["agentpool.dev"]
  resources: ["agentbudgets/status"]
  verbs: ["patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects", "triggerauthentications"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* The leader election's Lease, in the release namespace. */}}
{{- define "agentpool-operator.leaseName" -}}
{{- include "agentpool-operator.fullname" . }}
{{- end }}

{{/* A component's topologySpreadConstraints: its values' list when set (an empty list
renders none), else spread over nodes and zones, softly (ScheduleAnyway: a single-node or
single-zone cluster still runs every replica), counting only the pods of the same rollout
(pod-template-hash) so a rolling update is not pushed aside by the pods it replaces.
Arguments: root, values (the component's values), selector (its selector labels, YAML). */}}
{{- define "agentpool-operator.topologySpread" -}}
{{- $constraints := .values.topologySpreadConstraints }}
{{- if kindIs "invalid" $constraints }}
{{- $constraints = list }}
{{- range $key := list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
{{- $constraints = append $constraints (dict "maxSkew" 1 "topologyKey" $key "whenUnsatisfiable" "ScheduleAnyway" "labelSelector" (dict "matchLabels" ($.selector | fromYaml)) "matchLabelKeys" (list "pod-template-hash")) }}
{{- end }}
{{- end }}
{{- with $constraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A component's PodDisruptionBudget, only with more than one replica (with one, any
minAvailable would block every node drain). Arguments: root, values, name, component,
selector (YAML). */}}
{{- define "agentpool-operator.pdb" -}}
{{- if and .values.podDisruptionBudget.enabled (gt (int .values.replicas) 1) }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "agentpool-operator.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- with .values.podDisruptionBudget }}
  {{- if hasKey . "maxUnavailable" }}
  maxUnavailable: {{ .maxUnavailable }}
  {{- else }}
  minAvailable: {{ .minAvailable | default 1 }}
  {{- end }}
  {{- end }}
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- .selector | nindent 6 }}
{{- end }}
{{- end }}

{{/* The external metrics APIService (one per cluster). */}}
{{- define "agentpool-operator.apiServiceName" -}}
v1beta1.external.metrics.k8s.io
{{- end }}

{{/* The Secret the metrics API's pods mount: tls.crt and tls.key (metricsApi.tls.mode). */}}
{{- define "agentpool-operator.servingSecretName" -}}
{{- $name := include "agentpool-operator.metricsApiName" . }}
{{- $tls := .Values.metricsApi.tls }}
{{- if eq $tls.mode "existingSecret" }}
{{- required "metricsApi.tls.existingSecret is required with metricsApi.tls.mode=existingSecret" $tls.existingSecret }}
{{- else if eq $tls.mode "certManager" }}
{{- printf "%s-tls" $name }}
{{- else }}
{{- printf "%s-serving-cert" $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The Secret holding the CA the operator signs the serving certificate with (mode
operator); only the operator reads it. */}}
{{- define "agentpool-operator.caSecretName" -}}
{{- printf "%s-ca" (include "agentpool-operator.metricsApiName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Another release's queue directory this release's operator publishes into
(metricsApi.shared), as namespace/name; "" when none. */}}
{{- define "agentpool-operator.sharedDirectory" -}}
{{- with .Values.metricsApi.shared }}
{{- if and (not $.Values.metricsApi.enabled) .namespace .fullname }}
{{- printf "%s/%s" .namespace (printf "%s-metrics-api-queues" .fullname | trunc 63 | trimSuffix "-") }}
{{- end }}
{{- end }}
{{- end }}

{{/* The release (namespace/name) that owns an object, from Helm's ownership annotations;
"" when Helm did not install it. */}}
{{- define "agentpool-operator.helmOwner" -}}
{{- $annotations := (.metadata | default dict).annotations | default dict }}
{{- with index $annotations "meta.helm.sh/release-name" }}
{{- printf "%s/%s" (index $annotations "meta.helm.sh/release-namespace") . }}
{{- end }}
{{- end }}

{{/* The installed AgentPool CRD's owning release, when it is another release than this one
(the chart then leaves the CRD to it); "" otherwise (absent, ours, or not Helm's). */}}
{{- define "agentpool-operator.crdOwnedElsewhere" -}}
{{- $crd := lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition" "" "agentpools.agentpool.dev" }}
{{- $owner := include "agentpool-operator.helmOwner" $crd }}
{{- if and $owner (ne $owner (printf "%s/%s" .Release.Namespace .Release.Name)) }}
{{- $owner }}
{{- end }}
{{- end }}
