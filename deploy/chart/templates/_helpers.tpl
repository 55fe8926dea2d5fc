{{/* Labels every object of the chart carries. */}}
{{- define "mesh.labels" -}}
app.kubernetes.io/part-of: ambient-mesh
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* A component's image: registry/name:tag. Call with (list $ "ztunnel"). */}}
{{- define "mesh.image" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{ $root.Values.image.registry }}/{{ $name }}:{{ $root.Values.image.tag }}
{{- end }}

{{/*
A CustomResourceDefinition serving every version in .versions with the same schema (the
first version is stored). Takes a dict: root, group, kind, plural, scope, shortNames,
versions, schema (the name of the template rendering the spec's schema), annotations.
*/}}
{{- define "mesh.crd" -}}
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {{ .plural }}.{{ .group }}
  labels:
    {{- include "mesh.labels" .root | nindent 4 }}
  {{- with .annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  group: {{ .group }}
  names:
    kind: {{ .kind }}
    listKind: {{ .kind }}List
    plural: {{ .plural }}
    singular: {{ lower .kind }}
    {{- with .shortNames }}
    shortNames: {{ toJson . }}
    {{- end }}
  scope: {{ .scope | default "Namespaced" }}
  versions:
  {{- range $i, $version := .versions }}
    - name: {{ $version }}
      served: true
      storage: {{ eq $i 0 }}
      subresources:
        status: {}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              {{- include $.schema $.root | nindent 14 }}
            status:
              type: object
              x-kubernetes-preserve-unknown-fields: true
  {{- end }}
{{- end }}
