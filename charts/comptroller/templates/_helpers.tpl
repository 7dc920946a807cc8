{{/* Names, labels and the pieces every component's pod spec shares. */}}

{{- define "comptroller.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* `<release>-<chart>`, or the release name when it already contains the chart name. Kept to 46
characters so that the longest suffixed name (`-operator-metrics`) stays within 63. */}}
{{- define "comptroller.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "comptroller.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "comptroller.labels" -}}
helm.sh/chart: {{ include "comptroller.chart" . }}
app.kubernetes.io/name: {{ include "comptroller.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: comptroller
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component: call with (dict "ctx" $ "component" "webhook"). */}}
{{- define "comptroller.componentLabels" -}}
{{ include "comptroller.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "comptroller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "comptroller.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* ---- component names ---------------------------------------------------------------- */}}

{{- define "comptroller.webhook.fullname" -}}{{ include "comptroller.fullname" . }}-webhook{{- end }}
{{- define "comptroller.operator.fullname" -}}{{ include "comptroller.fullname" . }}-operator{{- end }}
{{- define "comptroller.certs.fullname" -}}{{ include "comptroller.fullname" . }}-certs{{- end }}

{{/* Both webhook configurations share one name (they are different kinds), so the certificate job's
RBAC names one resource and `certs ensure --webhook-config` patches both. */}}
{{- define "comptroller.webhookConfiguration.name" -}}{{ include "comptroller.fullname" . }}{{- end }}

{{- define "comptroller.tls.secretName" -}}{{ include "comptroller.fullname" . }}-webhook-tls{{- end }}

{{/* The DNS name the API server uses for a service reference: <service>.<namespace>.svc */}}
{{- define "comptroller.webhook.host" -}}
{{ include "comptroller.webhook.fullname" . }}.{{ .Release.Namespace }}.svc
{{- end }}

{{- define "comptroller.peering" -}}
{{- default (include "comptroller.fullname" .) .Values.operator.peering.name }}
{{- end }}

{{- define "comptroller.webhook.serviceAccountName" -}}
{{- default (include "comptroller.webhook.fullname" .) .Values.webhook.serviceAccount.name }}
{{- end }}

{{- define "comptroller.operator.serviceAccountName" -}}
{{- default (include "comptroller.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- end }}

{{- define "comptroller.certs.serviceAccountName" -}}
{{- default (include "comptroller.certs.fullname" .) .Values.certs.serviceAccount.name }}
{{- end }}

{{/* ---- shared pod spec pieces --------------------------------------------------------- */}}

{{- define "comptroller.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}
{{- end }}

{{/* Pod-level fields common to every pod: call with (dict "ctx" $ "priorityClassName" "..."). */}}
{{- define "comptroller.podCommon" -}}
{{- $priority := default .ctx.Values.priorityClassName .priorityClassName }}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $priority }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml .ctx.Values.podSecurityContext | nindent 2 }}
{{- end }}

{{- define "comptroller.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end }}

{{/* The namespace every component runs in, for `--namespace $(POD_NAMESPACE)`. */}}
{{- define "comptroller.podEnv" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}

{{/* The kinds both webhooks intercept (docs/crds.md#workload-kinds), one rule per API group. The ML operators' CRDs
serve several versions over their lifetimes; the engine reads pod templates by path, not version. */}}
{{- define "comptroller.webhook.rules" -}}
{{- $rules := list
  (dict "apiGroups" (list "") "apiVersions" (list "v1") "resources" (list "pods"))
  (dict "apiGroups" (list "apps") "apiVersions" (list "v1") "resources" (list "deployments" "statefulsets" "replicasets" "daemonsets"))
  (dict "apiGroups" (list "batch") "apiVersions" (list "v1") "resources" (list "jobs" "cronjobs"))
  (dict "apiGroups" (list "kubeflow.org") "apiVersions" (list "*") "resources" (list "pytorchjobs" "tfjobs" "mpijobs"))
  (dict "apiGroups" (list "ray.io") "apiVersions" (list "*") "resources" (list "rayjobs" "rayclusters" "rayservices"))
  (dict "apiGroups" (list "jobset.x-k8s.io") "apiVersions" (list "*") "resources" (list "jobsets"))
  (dict "apiGroups" (list "leaderworkerset.x-k8s.io") "apiVersions" (list "*") "resources" (list "leaderworkersets"))
}}
{{- range $rules }}
- apiGroups: {{ toJson .apiGroups }}
  apiVersions: {{ toJson .apiVersions }}
  resources: {{ toJson .resources }}
  operations: ["CREATE", "UPDATE"]
  scope: Namespaced
{{- end }}
{{- end }}

{{/* The scale subresources the scale webhook judges (`kubectl scale`, HPAs): a scale-up must not
slip past a spent budget (docs/crds.md#updates-and-scaling). Keep in step with
controller/webhook/registration.py SCALE_RESOURCES. */}}
{{- define "comptroller.webhook.scaleRules" -}}
{{- $rules := list
  (dict "apiGroups" (list "apps") "apiVersions" (list "v1") "resources" (list "deployments/scale" "statefulsets/scale" "replicasets/scale"))
  (dict "apiGroups" (list "kubeflow.org") "apiVersions" (list "*") "resources" (list "pytorchjobs/scale"))
  (dict "apiGroups" (list "leaderworkerset.x-k8s.io") "apiVersions" (list "*") "resources" (list "leaderworkersets/scale"))
}}
{{- range $rules }}
- apiGroups: {{ toJson .apiGroups }}
  apiVersions: {{ toJson .apiVersions }}
  resources: {{ toJson .resources }}
  operations: ["UPDATE"]
  scope: Namespaced
{{- end }}
{{- end }}

{{/* The DRA objects the claim webhook judges when they are created, and the ResourceClaim
updates it judges (docs/crds.md#dra-claims-created-after-their-pods). Keep in step with
controller/webhook/registration.py CLAIM_RESOURCES and CLAIM_UPDATE_RESOURCES. */}}
{{- define "comptroller.webhook.claimRules" -}}
- apiGroups: ["resource.k8s.io"]
  apiVersions: ["*"]
  resources: ["resourceclaims", "resourceclaimtemplates"]
  operations: ["CREATE"]
  scope: Namespaced
- apiGroups: ["resource.k8s.io"]
  apiVersions: ["*"]
  resources: ["resourceclaims"]
  operations: ["UPDATE"]
  scope: Namespaced
{{- end }}

{{/* Never the control plane's namespace nor our own: a broken webhook must not be able to block
the pods that would fix it. A namespace labelled `finops.comptroller.dev/ignore=true` opts out too
(like Gatekeeper's `admission.gatekeeper.sh/ignore`); labelling namespaces is a cluster-admin right. */}}
{{- define "comptroller.webhook.namespaceSelector" -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: {{ toJson (concat (list "kube-system" .Release.Namespace) .Values.webhook.excludeNamespaces | uniq) }}
  - key: finops.comptroller.dev/ignore
    operator: NotIn
    values: ["true"]
{{- with .Values.webhook.namespaceSelectorExpressions }}
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Common fields of one webhook entry: call with (dict "ctx" $ "path" "/validate"), and
"rules" "comptroller.webhook.scaleRules" for the scale webhook. */}}
{{- define "comptroller.webhook.entry" -}}
{{- $ctx := .ctx -}}
clientConfig:
  service:
    name: {{ include "comptroller.webhook.fullname" $ctx }}
    namespace: {{ $ctx.Release.Namespace }}
    path: {{ .path }}
    port: {{ $ctx.Values.webhook.service.port }}
  {{- with (include "comptroller.caBundle" $ctx) }}
  caBundle: {{ . }}
  {{- end }}
rules:
  {{- include (default "comptroller.webhook.rules" .rules) $ctx | trim | nindent 2 }}
namespaceSelector:
  {{- include "comptroller.webhook.namespaceSelector" $ctx | nindent 2 }}
{{- with $ctx.Values.webhook.objectSelector }}
objectSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
failurePolicy: {{ $ctx.Values.webhook.failurePolicy }}
matchPolicy: Equivalent
sideEffects: None
timeoutSeconds: {{ $ctx.Values.webhook.timeoutSeconds }}
admissionReviewVersions: ["v1"]
{{- end }}

{{/* With self-managed certificates, keep the CA the certificate job already patched in: an upgrade
(or a GitOps tool applying the rendered manifest) must not blank `caBundle` and break admission
until the job runs again. Empty on first install and in `helm template`, where the job fills it. */}}
{{- define "comptroller.caBundle" -}}
{{- if not .Values.certManager.enabled }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "comptroller.tls.secretName" .) }}
{{- if $secret }}
{{- index ($secret.data | default dict) "ca.crt" | default "" }}
{{- end }}
{{- end }}
{{- end }}
