{{/* The image: repository and tag (default: the chart's appVersion). */}}
{{- define "podnet.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "podnet.labels" -}}
app.kubernetes.io/name: podnet
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
{{- end }}

{{/* Where the pods run: every (Linux) node, whatever its taints. */}}
{{- define "podnet.placement" -}}
priorityClassName: {{ .Values.priorityClassName }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
