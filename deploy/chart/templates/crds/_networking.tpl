{{/* Schemas of the networking.istio.io kinds. */}}

{{- define "schema.destination" -}}
type: object
required: ["host"]
properties:
  host:
    type: string
  subset:
    type: string
  port:
    {{- include "schema.portSelector" . | nindent 4 }}
{{- end }}

{{- define "schema.headerOperations" -}}
type: object
properties:
  set:
    {{- include "schema.stringMap" . | nindent 4 }}
  add:
    {{- include "schema.stringMap" . | nindent 4 }}
  remove:
    {{- include "schema.strings" . | nindent 4 }}
{{- end }}

{{- define "schema.headers" -}}
type: object
properties:
  request:
    {{- include "schema.headerOperations" . | nindent 4 }}
  response:
    {{- include "schema.headerOperations" . | nindent 4 }}
{{- end }}

{{- define "schema.routeDestinations" -}}
type: array
items:
  type: object
  required: ["destination"]
  properties:
    destination:
      {{- include "schema.destination" . | nindent 6 }}
    weight:
      type: integer
      minimum: 0
    headers:
      {{- include "schema.headers" . | nindent 6 }}
{{- end }}

{{- define "schema.l4Match" -}}
destinationSubnets:
  {{- include "schema.strings" . | nindent 2 }}
port:
  {{- include "schema.port" . | nindent 2 }}
sourceLabels:
  {{- include "schema.stringMap" . | nindent 2 }}
gateways:
  {{- include "schema.strings" . | nindent 2 }}
sourceNamespace:
  type: string
{{- end }}

{{- define "schema.httpRoute" -}}
type: object
properties:
  name:
    type: string
  match:
    type: array
    items:
      type: object
      properties:
        name:
          type: string
        {{- range list "uri" "scheme" "method" "authority" }}
        {{ . }}:
          {{- include "schema.stringMatch" $ | nindent 10 }}
        {{- end }}
        {{- range list "headers" "queryParams" "withoutHeaders" }}
        {{ . }}:
          {{- include "schema.stringMatchMap" $ | nindent 10 }}
        {{- end }}
        port:
          {{- include "schema.port" . | nindent 10 }}
        sourceLabels:
          {{- include "schema.stringMap" . | nindent 10 }}
        gateways:
          {{- include "schema.strings" . | nindent 10 }}
        ignoreUriCase:
          type: boolean
        sourceNamespace:
          type: string
        statPrefix:
          type: string
  route:
    {{- include "schema.routeDestinations" . | nindent 4 }}
  redirect:
    type: object
    properties:
      uri:
        type: string
      authority:
        type: string
      port:
        {{- include "schema.port" . | nindent 8 }}
      derivePort:
        type: string
        enum: ["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"]
      scheme:
        type: string
      redirectCode:
        type: integer
  directResponse:
    type: object
    required: ["status"]
    properties:
      status:
        type: integer
        minimum: 200
        maximum: 599
      body:
        type: object
        maxProperties: 1
        properties:
          string:
            type: string
          bytes:
            type: string
            format: byte
  delegate:
    type: object
    properties:
      name:
        type: string
      namespace:
        type: string
  rewrite:
    type: object
    properties:
      uri:
        type: string
      authority:
        type: string
      uriRegexRewrite:
        type: object
        properties:
          match:
            type: string
          rewrite:
            type: string
  timeout:
    {{- include "schema.duration" . | nindent 4 }}
  retries:
    type: object
    properties:
      attempts:
        type: integer
        minimum: 0
      perTryTimeout:
        {{- include "schema.duration" . | nindent 8 }}
      retryOn:
        type: string
      retryRemoteLocalities:
        type: boolean
      retryIgnorePreviousHosts:
        type: boolean
      backoff:
        {{- include "schema.duration" . | nindent 8 }}
  fault:
    type: object
    properties:
      delay:
        type: object
        properties:
          fixedDelay:
            {{- include "schema.duration" . | nindent 12 }}
          percentage:
            {{- include "schema.percent" . | nindent 12 }}
          percent:
            type: integer
      abort:
        type: object
        properties:
          httpStatus:
            type: integer
          grpcStatus:
            type: string
          http2Error:
            type: string
          percentage:
            {{- include "schema.percent" . | nindent 12 }}
  mirror:
    {{- include "schema.destination" . | nindent 4 }}
  mirrorPercentage:
    {{- include "schema.percent" . | nindent 4 }}
  mirrors:
    type: array
    items:
      type: object
      required: ["destination"]
      properties:
        destination:
          {{- include "schema.destination" . | nindent 10 }}
        percentage:
          {{- include "schema.percent" . | nindent 10 }}
  corsPolicy:
    type: object
    properties:
      allowOrigins:
        type: array
        items:
          {{- include "schema.stringMatch" . | nindent 10 }}
      {{- range list "allowMethods" "allowHeaders" "exposeHeaders" }}
      {{ . }}:
        {{- include "schema.strings" $ | nindent 8 }}
      {{- end }}
      maxAge:
        {{- include "schema.duration" . | nindent 8 }}
      allowCredentials:
        type: boolean
      unmatchedPreflights:
        type: string
        enum: ["UNSPECIFIED", "FORWARD", "IGNORE"]
  headers:
    {{- include "schema.headers" . | nindent 4 }}
{{- end }}

{{- define "schema.virtualService" -}}
type: object
description: HTTP and TCP routing for a set of hosts (networking.istio.io).
properties:
  hosts:
    {{- include "schema.strings" . | nindent 4 }}
  gateways:
    {{- include "schema.strings" . | nindent 4 }}
  exportTo:
    {{- include "schema.strings" . | nindent 4 }}
  http:
    type: array
    items:
      {{- include "schema.httpRoute" . | nindent 6 }}
  tls:
    type: array
    items:
      type: object
      required: ["match"]
      properties:
        match:
          type: array
          items:
            type: object
            required: ["sniHosts"]
            properties:
              sniHosts:
                {{- include "schema.strings" . | nindent 16 }}
              {{- include "schema.l4Match" . | nindent 14 }}
        route:
          {{- include "schema.routeDestinations" . | nindent 10 }}
  tcp:
    type: array
    items:
      type: object
      properties:
        match:
          type: array
          items:
            type: object
            properties:
              sourceSubnet:
                type: string
              {{- include "schema.l4Match" . | nindent 14 }}
        route:
          {{- include "schema.routeDestinations" . | nindent 10 }}
{{- end }}

{{- define "schema.tlsSettings" -}}
type: object
properties:
  mode:
    type: string
    enum: ["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]
  {{- range list "clientCertificate" "privateKey" "caCertificates" "credentialName" "sni" "caCrl" }}
  {{ . }}:
    type: string
  {{- end }}
  subjectAltNames:
    {{- include "schema.strings" . | nindent 4 }}
  insecureSkipVerify:
    type: boolean
{{- end }}

{{- define "schema.loadBalancer" -}}
type: object
properties:
  simple:
    type: string
    enum: ["UNSPECIFIED", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN"]
  consistentHash:
    type: object
    properties:
      httpHeaderName:
        type: string
      httpCookie:
        type: object
        required: ["name"]
        properties:
          name:
            type: string
          path:
            type: string
          ttl:
            {{- include "schema.duration" . | nindent 12 }}
      useSourceIp:
        type: boolean
      httpQueryParameterName:
        type: string
      ringHash:
        type: object
        properties:
          minimumRingSize:
            type: integer
      maglev:
        type: object
        properties:
          tableSize:
            type: integer
      minimumRingSize:
        type: integer
  warmupDurationSecs:
    {{- include "schema.duration" . | nindent 4 }}
{{- end }}

{{- define "schema.connectionPool" -}}
type: object
properties:
  tcp:
    type: object
    properties:
      maxConnections:
        type: integer
        minimum: 0
      connectTimeout:
        {{- include "schema.duration" . | nindent 8 }}
      maxConnectionDuration:
        {{- include "schema.duration" . | nindent 8 }}
      idleTimeout:
        {{- include "schema.duration" . | nindent 8 }}
      tcpKeepalive:
        type: object
        properties:
          probes:
            type: integer
          time:
            {{- include "schema.duration" . | nindent 12 }}
          interval:
            {{- include "schema.duration" . | nindent 12 }}
  http:
    type: object
    properties:
      {{- range list "http1MaxPendingRequests" "http2MaxRequests" "maxRequestsPerConnection" "maxRetries" "maxConcurrentStreams" }}
      {{ . }}:
        type: integer
        minimum: 0
      {{- end }}
      idleTimeout:
        {{- include "schema.duration" . | nindent 8 }}
      h2UpgradePolicy:
        type: string
        enum: ["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"]
      useClientProtocol:
        type: boolean
{{- end }}

{{- define "schema.outlierDetection" -}}
type: object
properties:
  {{- range list "consecutiveErrors" "consecutive5xxErrors" "consecutiveGatewayErrors" "consecutiveLocalOriginFailures" }}
  {{ . }}:
    type: integer
    minimum: 0
  {{- end }}
  splitExternalLocalOriginErrors:
    type: boolean
  interval:
    {{- include "schema.duration" . | nindent 4 }}
  baseEjectionTime:
    {{- include "schema.duration" . | nindent 4 }}
  maxEjectionPercent:
    type: integer
    minimum: 0
    maximum: 100
  minHealthPercent:
    type: integer
    minimum: 0
    maximum: 100
{{- end }}

{{- define "schema.trafficPolicy" -}}
type: object
properties:
  loadBalancer:
    {{- include "schema.loadBalancer" . | nindent 4 }}
  connectionPool:
    {{- include "schema.connectionPool" . | nindent 4 }}
  outlierDetection:
    {{- include "schema.outlierDetection" . | nindent 4 }}
  tls:
    {{- include "schema.tlsSettings" . | nindent 4 }}
  portLevelSettings:
    type: array
    items:
      type: object
      properties:
        port:
          {{- include "schema.portSelector" . | nindent 10 }}
        loadBalancer:
          {{- include "schema.loadBalancer" . | nindent 10 }}
        connectionPool:
          {{- include "schema.connectionPool" . | nindent 10 }}
        outlierDetection:
          {{- include "schema.outlierDetection" . | nindent 10 }}
        tls:
          {{- include "schema.tlsSettings" . | nindent 10 }}
{{- end }}

{{- define "schema.destinationRule" -}}
type: object
description: Policies for traffic to a service after routing (networking.istio.io).
required: ["host"]
properties:
  host:
    type: string
  trafficPolicy:
    {{- include "schema.trafficPolicy" . | nindent 4 }}
  subsets:
    type: array
    items:
      type: object
      required: ["name"]
      properties:
        name:
          type: string
        labels:
          {{- include "schema.stringMap" . | nindent 10 }}
        trafficPolicy:
          {{- include "schema.trafficPolicy" . | nindent 10 }}
  exportTo:
    {{- include "schema.strings" . | nindent 4 }}
  workloadSelector:
    {{- include "schema.workloadSelector" . | nindent 4 }}
{{- end }}

{{- define "schema.gateway" -}}
type: object
description: A load balancer at the edge of the mesh (networking.istio.io Gateway).
properties:
  selector:
    {{- include "schema.stringMap" . | nindent 4 }}
  servers:
    type: array
    items:
      type: object
      required: ["port", "hosts"]
      properties:
        port:
          type: object
          required: ["number", "protocol"]
          properties:
            number:
              {{- include "schema.port" . | nindent 14 }}
            targetPort:
              {{- include "schema.port" . | nindent 14 }}
            protocol:
              type: string
            name:
              type: string
        bind:
          type: string
        hosts:
          {{- include "schema.strings" . | nindent 10 }}
        name:
          type: string
        defaultEndpoint:
          type: string
        tls:
          type: object
          properties:
            httpsRedirect:
              type: boolean
            mode:
              type: string
              enum: ["PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"]
            {{- range list "serverCertificate" "privateKey" "caCertificates" "caCrl" "credentialName" }}
            {{ . }}:
              type: string
            {{- end }}
            {{- range list "credentialNames" "subjectAltNames" "verifyCertificateSpki" "verifyCertificateHash" "cipherSuites" }}
            {{ . }}:
              {{- include "schema.strings" $ | nindent 14 }}
            {{- end }}
            minProtocolVersion:
              type: string
              enum: ["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"]
            maxProtocolVersion:
              type: string
              enum: ["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"]
{{- end }}

{{/*
EnvoyFilter: accepted so that Istio users' objects (the seed lecture's local rate limit)
apply; patch values are Envoy configuration and stay free-form.
*/}}
{{- define "schema.envoyFilter" -}}
type: object
description: Envoy configuration patches (networking.istio.io); the waypoint reads the rate-limit subset.
properties:
  workloadSelector:
    type: object
    properties:
      labels:
        {{- include "schema.stringMap" . | nindent 8 }}
  targetRefs:
    {{- include "schema.targetRefs" . | nindent 4 }}
  priority:
    type: integer
  configPatches:
    type: array
    items:
      type: object
      properties:
        applyTo:
          type: string
          enum: ["INVALID", "LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE", "CLUSTER", "EXTENSION_CONFIG", "BOOTSTRAP", "LISTENER_FILTER"]
        match:
          type: object
          properties:
            context:
              type: string
              enum: ["ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY", "WAYPOINT"]
            proxy:
              type: object
              properties:
                proxyVersion:
                  type: string
                metadata:
                  {{- include "schema.stringMap" . | nindent 18 }}
            listener:
              type: object
              properties:
                portNumber:
                  {{- include "schema.port" . | nindent 18 }}
                name:
                  type: string
                listenerFilter:
                  type: string
                filterChain:
                  type: object
                  properties:
                    {{- range list "name" "sni" "transportProtocol" "applicationProtocols" }}
                    {{ . }}:
                      type: string
                    {{- end }}
                    destinationPort:
                      {{- include "schema.port" . | nindent 22 }}
                    filter:
                      type: object
                      properties:
                        name:
                          type: string
                        subFilter:
                          type: object
                          properties:
                            name:
                              type: string
            routeConfiguration:
              type: object
              properties:
                portNumber:
                  {{- include "schema.port" . | nindent 18 }}
                {{- range list "portName" "gateway" "name" }}
                {{ . }}:
                  type: string
                {{- end }}
                vhost:
                  type: object
                  properties:
                    name:
                      type: string
                    route:
                      type: object
                      properties:
                        name:
                          type: string
                        action:
                          type: string
                          enum: ["ANY", "ROUTE", "REDIRECT", "DIRECT_RESPONSE"]
            cluster:
              type: object
              properties:
                portNumber:
                  {{- include "schema.port" . | nindent 18 }}
                {{- range list "service" "subset" "name" }}
                {{ . }}:
                  type: string
                {{- end }}
        patch:
          type: object
          properties:
            operation:
              type: string
              enum: ["INVALID", "MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE"]
            filterClass:
              type: string
              enum: ["UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"]
            value:
              type: object
              x-kubernetes-preserve-unknown-fields: true
{{- end }}
