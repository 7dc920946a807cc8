{{/* The names of the webhooks the chart registers (templates/webhook/webhookconfigurations.yaml), as
the API server labels its own admission webhook metrics with them (`name`). A chart test checks
this list against the rendered webhook configurations, so the two cannot drift apart. */}}
{{- define "comptroller.monitoring.webhookNames" -}}
{{- $names := list -}}
{{- if .Values.webhook.validating.enabled -}}
{{- $names = concat $names (list "validate.finops.comptroller.dev" "scale.finops.comptroller.dev" "claim.finops.comptroller.dev") -}}
{{- end -}}
{{- if .Values.webhook.mutating.enabled -}}
{{- $names = append $names "mutate.finops.comptroller.dev" -}}
{{- end -}}
{{- join "," $names -}}
{{- end }}

{{/* A PromQL label matcher on those names: `name=~"validate\\.finops\\.comptroller\\.dev|..."`. */}}
{{- define "comptroller.monitoring.webhookNameMatcher" -}}
{{- $names := splitList "," (include "comptroller.monitoring.webhookNames" .) -}}
name=~"{{ $names | join "|" | replace "." `\\.` }}"
{{- end }}
