{{/* Schemas of the Gateway API subset waypoints use (gateway.networking.k8s.io). */}}

{{- define "schema.gatewayName" -}}
type: string
minLength: 1
maxLength: 253
{{- end }}

{{- define "schema.parametersRef" -}}
type: object
required: ["group", "kind", "name"]
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

{{- define "schema.gatewayClass" -}}
type: object
description: A class of Gateways and the controller that implements it.
required: ["controllerName"]
properties:
  controllerName:
    type: string
    minLength: 1
  description:
    type: string
    maxLength: 64
  parametersRef:
    {{- include "schema.parametersRef" . | nindent 4 }}
{{- end }}

{{- define "schema.gatewaySpec" -}}
type: object
description: A Gateway; with gatewayClassName istio-waypoint, a waypoint.
required: ["gatewayClassName", "listeners"]
properties:
  gatewayClassName:
    {{- include "schema.gatewayName" . | nindent 4 }}
  listeners:
    type: array
    minItems: 1
    maxItems: 64
    items:
      type: object
      required: ["name", "port", "protocol"]
      properties:
        name:
          {{- include "schema.gatewayName" . | nindent 10 }}
        hostname:
          type: string
        port:
          type: integer
          minimum: 1
          maximum: 65535
        protocol:
          type: string
          minLength: 1
        tls:
          type: object
          properties:
            mode:
              type: string
              enum: ["Terminate", "Passthrough"]
            certificateRefs:
              type: array
              items:
                type: object
                required: ["name"]
                properties:
                  group:
                    type: string
                  kind:
                    type: string
                  name:
                    type: string
                  namespace:
                    type: string
            options:
              {{- include "schema.stringMap" . | nindent 14 }}
        allowedRoutes:
          type: object
          properties:
            namespaces:
              type: object
              properties:
                from:
                  type: string
                  enum: ["All", "Same", "Selector", "None"]
                selector:
                  type: object
                  properties:
                    matchLabels:
                      {{- include "schema.stringMap" . | nindent 22 }}
            kinds:
              type: array
              items:
                type: object
                required: ["kind"]
                properties:
                  group:
                    type: string
                  kind:
                    type: string
  addresses:
    type: array
    items:
      type: object
      required: ["value"]
      properties:
        type:
          type: string
        value:
          type: string
  infrastructure:
    type: object
    properties:
      labels:
        {{- include "schema.stringMap" . | nindent 8 }}
      annotations:
        {{- include "schema.stringMap" . | nindent 8 }}
      parametersRef:
        {{- include "schema.parametersRef" . | nindent 8 }}
{{- end }}

{{- define "schema.backendRef" -}}
type: object
required: ["name"]
properties:
  group:
    type: string
  kind:
    type: string
  name:
    {{- include "schema.gatewayName" . | nindent 4 }}
  namespace:
    type: string
  port:
    type: integer
    minimum: 1
    maximum: 65535
{{- end }}

{{- define "schema.headerModifier" -}}
type: object
properties:
  set:
    type: array
    items:
      type: object
      required: ["name", "value"]
      properties:
        name:
          type: string
        value:
          type: string
  add:
    type: array
    items:
      type: object
      required: ["name", "value"]
      properties:
        name:
          type: string
        value:
          type: string
  remove:
    {{- include "schema.strings" . | nindent 4 }}
{{- end }}

{{- define "schema.pathModifier" -}}
type: object
required: ["type"]
properties:
  type:
    type: string
    enum: ["ReplaceFullPath", "ReplacePrefixMatch"]
  replaceFullPath:
    type: string
  replacePrefixMatch:
    type: string
{{- end }}

{{- define "schema.httpRouteFilters" -}}
type: array
items:
  type: object
  required: ["type"]
  properties:
    type:
      type: string
      enum: ["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect", "URLRewrite", "ExtensionRef"]
    requestHeaderModifier:
      {{- include "schema.headerModifier" . | nindent 6 }}
    responseHeaderModifier:
      {{- include "schema.headerModifier" . | nindent 6 }}
    requestMirror:
      type: object
      required: ["backendRef"]
      properties:
        backendRef:
          {{- include "schema.backendRef" . | nindent 10 }}
        percent:
          type: integer
          minimum: 0
          maximum: 100
        fraction:
          type: object
          required: ["numerator"]
          properties:
            numerator:
              type: integer
              minimum: 0
            denominator:
              type: integer
              minimum: 1
    requestRedirect:
      type: object
      properties:
        scheme:
          type: string
          enum: ["http", "https"]
        hostname:
          type: string
        path:
          {{- include "schema.pathModifier" . | nindent 10 }}
        port:
          type: integer
          minimum: 1
          maximum: 65535
        statusCode:
          type: integer
          enum: [301, 302, 303, 307, 308]
    urlRewrite:
      type: object
      properties:
        hostname:
          type: string
        path:
          {{- include "schema.pathModifier" . | nindent 10 }}
    extensionRef:
      type: object
      required: ["group", "kind", "name"]
      properties:
        group:
          type: string
        kind:
          type: string
        name:
          type: string
{{- end }}

{{- define "schema.nameValueMatch" -}}
type: array
items:
  type: object
  required: ["name", "value"]
  properties:
    type:
      type: string
      enum: ["Exact", "RegularExpression"]
    name:
      type: string
    value:
      type: string
{{- end }}

{{- define "schema.httpRouteSpec" -}}
type: object
description: HTTP routing rules attached to Gateways or Services (through a waypoint).
properties:
  parentRefs:
    type: array
    maxItems: 32
    items:
      type: object
      required: ["name"]
      properties:
        group:
          type: string
        kind:
          type: string
        namespace:
          type: string
        name:
          {{- include "schema.gatewayName" . | nindent 10 }}
        sectionName:
          type: string
        port:
          type: integer
          minimum: 1
          maximum: 65535
  hostnames:
    {{- include "schema.strings" . | nindent 4 }}
  rules:
    type: array
    maxItems: 16
    items:
      type: object
      properties:
        name:
          type: string
        matches:
          type: array
          items:
            type: object
            properties:
              path:
                type: object
                properties:
                  type:
                    type: string
                    enum: ["Exact", "PathPrefix", "RegularExpression"]
                  value:
                    type: string
              headers:
                {{- include "schema.nameValueMatch" . | nindent 16 }}
              queryParams:
                {{- include "schema.nameValueMatch" . | nindent 16 }}
              method:
                type: string
                enum: ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
        filters:
          {{- include "schema.httpRouteFilters" . | nindent 10 }}
        backendRefs:
          type: array
          items:
            type: object
            required: ["name"]
            properties:
              {{- range $key, $value := (include "schema.backendRef" . | fromYaml).properties }}
              {{ $key }}:
                {{- toYaml $value | nindent 16 }}
              {{- end }}
              weight:
                type: integer
                minimum: 0
                maximum: 1000000
              filters:
                {{- include "schema.httpRouteFilters" . | nindent 16 }}
        timeouts:
          type: object
          properties:
            request:
              type: string
            backendRequest:
              type: string
        retry:
          type: object
          properties:
            codes:
              type: array
              items:
                type: integer
            attempts:
              type: integer
              minimum: 0
            backoff:
              type: string
{{- end }}
