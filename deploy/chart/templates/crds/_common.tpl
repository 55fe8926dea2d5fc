{{/* Schema pieces several CRDs share. Each renders a schema at column 0. */}}

{{- define "schema.strings" -}}
type: array
items:
  type: string
{{- end }}

{{- define "schema.stringMap" -}}
type: object
additionalProperties:
  type: string
{{- end }}

{{- define "schema.workloadSelector" -}}
type: object
description: Selects the workloads (pods) by their labels.
properties:
  matchLabels:
    {{- include "schema.stringMap" . | nindent 4 }}
{{- end }}

{{- define "schema.targetRef" -}}
type: object
description: Names the resource (a Service, Gateway, ...) a policy attaches to.
required: ["kind", "name"]
properties:
  group:
    type: string
  kind:
    type: string
  name:
    type: string
  namespace:
    type: string
{{- end }}

{{- define "schema.targetRefs" -}}
type: array
items:
  {{- include "schema.targetRef" . | nindent 2 }}
{{- end }}

{{/* A protobuf Duration as Istio writes it: 10s, 50ms, 1.5s, 1h30m. */}}
{{- define "schema.duration" -}}
type: string
pattern: '^([0-9]+(\.[0-9]+)?(h|m|s|ms|us|µs|ns))+$'
{{- end }}

{{- define "schema.stringMatch" -}}
type: object
description: Exactly one of exact, prefix or regex (RE2).
maxProperties: 1
properties:
  exact:
    type: string
  prefix:
    type: string
  regex:
    type: string
{{- end }}

{{- define "schema.stringMatchMap" -}}
type: object
additionalProperties:
  {{- include "schema.stringMatch" . | nindent 2 }}
{{- end }}

{{- define "schema.percent" -}}
type: object
properties:
  value:
    type: number
    minimum: 0
    maximum: 100
{{- end }}

{{- define "schema.port" -}}
type: integer
minimum: 0
maximum: 65535
{{- end }}

{{- define "schema.portSelector" -}}
type: object
properties:
  number:
    {{- include "schema.port" . | nindent 4 }}
{{- end }}
