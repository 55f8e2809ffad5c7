{{/* Name of the chart, overridable. */}}
{{- define "labgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "labgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "labgate.gateway.fullname" -}}{{ include "labgate.fullname" . }}-gateway{{- end -}}
{{- define "labgate.admission.fullname" -}}{{ include "labgate.fullname" . }}-admission{{- end -}}

{{/* Labels on every object. */}}
{{- define "labgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: labgate
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of a component: include with (dict "ctx" $ "component" "gateway"). */}}
{{- define "labgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "labgate.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "labgate.componentLabels" -}}
{{ include "labgate.labels" .ctx }}
{{ include "labgate.selectorLabels" . }}
{{- end -}}

{{- define "labgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Pod security context shared by both components: Pod Security Standard "restricted". */}}
{{- define "labgate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "labgate.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Seconds in a Go-style duration such as 30s, 5m, 1h (the gateway's own syntax). */}}
{{- define "labgate.durationSeconds" -}}
{{- $d := toString . -}}
{{- if hasSuffix "ms" $d -}}1
{{- else if hasSuffix "s" $d -}}{{ trimSuffix "s" $d | int }}
{{- else if hasSuffix "m" $d -}}{{ mul (trimSuffix "m" $d | int) 60 }}
{{- else if hasSuffix "h" $d -}}{{ mul (trimSuffix "h" $d | int) 3600 }}
{{- else -}}{{ fail (printf "cannot read the duration %q: use a number with s, m or h" $d) }}
{{- end -}}
{{- end -}}

{{/* Name of the gateway's TLS Secret. */}}
{{- define "labgate.gateway.tlsSecret" -}}
{{- if eq .Values.gateway.tls.mode "certManager" -}}
{{ include "labgate.gateway.fullname" . }}-tls
{{- else -}}
{{ .Values.gateway.tls.existingSecret }}
{{- end -}}
{{- end -}}

{{/* Name of the admission service's serving-certificate Secret (cert-manager mode). */}}
{{- define "labgate.admission.tlsSecret" -}}{{ include "labgate.admission.fullname" . }}-tls{{- end -}}
{{- define "labgate.admission.caSecret" -}}{{ include "labgate.admission.fullname" . }}-ca{{- end -}}

{{/* Egress rule to the API server for labgate's own NetworkPolicies. */}}
{{- define "labgate.apiServerEgress" -}}
- ports:
    {{- range .Values.apiServer.ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
  {{- with .Values.apiServer.cidrs }}
  to:
    {{- range . }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
  {{- end }}
{{- end -}}

{{/* Egress rule to cluster DNS. */}}
{{- define "labgate.dnsEgress" -}}
- to:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: kube-system}
      podSelector:
        matchLabels: {k8s-app: kube-dns}
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end -}}

{{/* The --jwt-issuers-file of gateway.jwt.extraIssuers, checked as the gateway checks it. */}}
{{- define "labgate.issuersFile" -}}
{{- $jwt := .Values.gateway.jwt -}}
{{- $entries := list -}}
{{- range $i, $e := $jwt.extraIssuers -}}
{{- $where := printf "gateway.jwt.extraIssuers[%d] (%s)" $i $e.issuer -}}
{{- if eq (not $e.audiences) (not $e.allowAnyAudience) -}}
{{- fail (printf "%s: give audiences (the aud it signs for labgate), or allowAnyAudience: true if its keys sign for nothing else (not both)" $where) -}}
{{- end -}}
{{- if and (not $e.keys) (not $e.jwksUrl) -}}
{{- fail (printf "%s has no keys: give jwksUrl or keys" $where) -}}
{{- end -}}
{{- if and (or $e.keys $e.jwksCaFile) (not $jwt.existingSecret) -}}
{{- fail (printf "%s: keys and jwksCaFile name files of gateway.jwt.existingSecret, which is empty" $where) -}}
{{- end -}}
{{- if and $e.jwksCaFile (not $e.jwksUrl) -}}
{{- fail (printf "%s: jwksCaFile is set but jwksUrl is empty" $where) -}}
{{- end -}}
{{- $entry := dict "issuer" $e.issuer -}}
{{- with $e.audiences }}{{ $_ := set $entry "audiences" . }}{{ end -}}
{{- if $e.allowAnyAudience }}{{ $_ := set $entry "allowAnyAudience" true }}{{ end -}}
{{- with $e.jwksUrl }}{{ $_ := set $entry "jwksUrl" . }}{{ end -}}
{{- with $e.jwksCaFile }}{{ $_ := set $entry "jwksCaFile" (printf "/etc/labgate/jwt/%s" .) }}{{ end -}}
{{- with $e.userClaim }}{{ $_ := set $entry "userClaim" . }}{{ end -}}
{{- $public := list -}}
{{- $hmac := list -}}
{{- range $e.keys -}}
{{- $file := printf "%s/etc/labgate/jwt/%s" (ternary (printf "%s=" .kid) "" (not (empty .kid))) .file -}}
{{- if eq .type "hmac" }}{{ $hmac = append $hmac $file }}{{ else }}{{ $public = append $public $file }}{{ end -}}
{{- end -}}
{{- with $public }}{{ $_ := set $entry "publicKeyFiles" . }}{{ end -}}
{{- with $hmac }}{{ $_ := set $entry "hmacSecretFiles" . }}{{ end -}}
{{- $entries = append $entries $entry -}}
{{- end -}}
{{- toYaml (dict "issuers" $entries) -}}
{{- end -}}

{{/* Every JWKS URL the gateway fetches (gateway.jwt.jwksUrl and the extra issuers'). */}}
{{- define "labgate.jwksUrls" -}}
{{- $urls := list -}}
{{- with .Values.gateway.jwt.jwksUrl }}{{ $urls = append $urls . }}{{ end -}}
{{- range .Values.gateway.jwt.extraIssuers }}{{ with .jwksUrl }}{{ $urls = append $urls . }}{{ end }}{{ end -}}
{{- toJson $urls -}}
{{- end -}}

{{/* Egress rule to the identity providers' JWKS URLs, when any is configured:
     the ports of the URLs (443 unless a URL names one) or networkPolicy.jwksEgress.ports,
     to networkPolicy.jwksEgress.cidrs/peers, or to any address when both are empty
     (a NetworkPolicy cannot name a host; the gateway dials no address a client chooses). */}}
{{- define "labgate.jwksEgress" -}}
{{- $urls := include "labgate.jwksUrls" . | fromJsonArray -}}
{{- $np := .Values.networkPolicy.jwksEgress -}}
{{- if $urls -}}
{{- $ports := list -}}
{{- if $np.ports -}}
{{- $ports = $np.ports -}}
{{- else -}}
{{- range $urls -}}
{{- $host := (urlParse .).host -}}
{{- $port := 443 -}}
{{- if regexMatch ":[0-9]+$" $host }}{{ $port = regexFind "[0-9]+$" $host | int }}{{ end -}}
{{- $ports = append $ports $port -}}
{{- end -}}
{{- end -}}
- ports:
    {{- range ($ports | uniq) }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
  {{- if or $np.cidrs $np.peers }}
  to:
    {{- range $np.cidrs }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
    {{- with $np.peers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
{{- end -}}
{{- end -}}
