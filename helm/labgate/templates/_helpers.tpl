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
