{{/* Schemas of the security.istio.io kinds. */}}

{{- define "schema.authorizationPolicy" -}}
type: object
description: Allows or denies traffic to the selected workloads (security.istio.io).
properties:
  selector:
    {{- include "schema.workloadSelector" . | nindent 4 }}
  targetRef:
    {{- include "schema.targetRef" . | nindent 4 }}
  targetRefs:
    {{- include "schema.targetRefs" . | nindent 4 }}
  action:
    type: string
    enum: ["ALLOW", "DENY", "AUDIT", "CUSTOM"]
  provider:
    type: object
    properties:
      name:
        type: string
  rules:
    type: array
    items:
      type: object
      properties:
        from:
          type: array
          items:
            type: object
            properties:
              source:
                type: object
                properties:
                  {{- range list "principals" "notPrincipals" "requestPrincipals" "notRequestPrincipals" "namespaces" "notNamespaces" "serviceAccounts" "notServiceAccounts" "ipBlocks" "notIpBlocks" "remoteIpBlocks" "notRemoteIpBlocks" }}
                  {{ . }}:
                    {{- include "schema.strings" $ | nindent 20 }}
                  {{- end }}
        to:
          type: array
          items:
            type: object
            properties:
              operation:
                type: object
                properties:
                  {{- range list "hosts" "notHosts" "ports" "notPorts" "methods" "notMethods" "paths" "notPaths" }}
                  {{ . }}:
                    {{- include "schema.strings" $ | nindent 20 }}
                  {{- end }}
        when:
          type: array
          items:
            type: object
            required: ["key"]
            properties:
              key:
                type: string
              values:
                {{- include "schema.strings" . | nindent 16 }}
              notValues:
                {{- include "schema.strings" . | nindent 16 }}
{{- end }}

{{- define "schema.mtls" -}}
type: object
properties:
  mode:
    type: string
    enum: ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]
{{- end }}

{{- define "schema.peerAuthentication" -}}
type: object
description: Which mutual TLS mode the selected workloads accept (security.istio.io).
properties:
  selector:
    {{- include "schema.workloadSelector" . | nindent 4 }}
  mtls:
    {{- include "schema.mtls" . | nindent 4 }}
  portLevelMtls:
    type: object
    description: Per-port mutual TLS modes, keyed by port number.
    additionalProperties:
      {{- include "schema.mtls" . | nindent 6 }}
{{- end }}

{{- define "schema.requestAuthentication" -}}
type: object
description: Which JWTs the selected workloads accept (security.istio.io).
properties:
  selector:
    {{- include "schema.workloadSelector" . | nindent 4 }}
  targetRef:
    {{- include "schema.targetRef" . | nindent 4 }}
  targetRefs:
    {{- include "schema.targetRefs" . | nindent 4 }}
  jwtRules:
    type: array
    items:
      type: object
      required: ["issuer"]
      properties:
        issuer:
          type: string
        audiences:
          {{- include "schema.strings" . | nindent 10 }}
        jwksUri:
          type: string
        jwks:
          type: string
        fromHeaders:
          type: array
          items:
            type: object
            required: ["name"]
            properties:
              name:
                type: string
              prefix:
                type: string
        fromParams:
          {{- include "schema.strings" . | nindent 10 }}
        fromCookies:
          {{- include "schema.strings" . | nindent 10 }}
        outputPayloadToHeader:
          type: string
        forwardOriginalToken:
          type: boolean
        outputClaimToHeaders:
          type: array
          items:
            type: object
            required: ["header", "claim"]
            properties:
              header:
                type: string
              claim:
                type: string
        timeout:
          {{- include "schema.duration" . | nindent 10 }}
{{- end }}
