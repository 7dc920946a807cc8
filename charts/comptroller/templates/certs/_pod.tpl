{{/* The pod template both certificate workloads run: `comptroller certs ensure` against the
release's Secret and webhook configurations. */}}
{{- define "comptroller.certs.podTemplate" -}}
metadata:
  labels:
    {{- include "comptroller.componentLabels" (dict "ctx" . "component" "certs") | nindent 4 }}
spec:
  serviceAccountName: {{ include "comptroller.certs.serviceAccountName" . }}
  restartPolicy: OnFailure
  {{- include "comptroller.podCommon" (dict "ctx" . "priorityClassName" "") | trim | nindent 2 }}
  containers:
    - name: certs
      image: {{ include "comptroller.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - certs
        - ensure
        - --dir=/tmp/certs
        - --secret={{ .Release.Namespace }}/{{ include "comptroller.tls.secretName" . }}
        - --host={{ include "comptroller.webhook.host" . }}
        {{- if or .Values.webhook.validating.enabled .Values.webhook.mutating.enabled }}
        - --webhook-config={{ include "comptroller.webhookConfiguration.name" . }}
        {{- end }}
        {{- with .Values.certs.extraArgs }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      env:
        {{- include "comptroller.podEnv" . | nindent 8 }}
      {{- include "comptroller.containerSecurityContext" . | nindent 6 }}
      resources:
        {{- toYaml .Values.certs.resources | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir:
        medium: Memory
        sizeLimit: 1Mi
  {{- with .Values.certs.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.certs.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
