{{/* Names, labels, images and the hardened security contexts every workload uses. */}}

{{- define "dreamloom.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dreamloom.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "dreamloom.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "dreamloom.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The names of the objects every release creates for itself, so that two releases in one
     namespace never share them (dreamloom.k8s.names.ReleaseNames derives the same; the pipelines
     compiled for a release mount its claims). */}}
{{- define "dreamloom.dataClaim" -}}
{{ include "dreamloom.fullname" . }}-data
{{- end -}}

{{- define "dreamloom.servingClaim" -}}
{{ include "dreamloom.fullname" . }}-serving
{{- end -}}

{{- define "dreamloom.trainingSettings" -}}
{{ include "dreamloom.fullname" . }}-training
{{- end -}}

{{- define "dreamloom.pipelineAccount" -}}
{{ include "dreamloom.fullname" . }}-pipeline
{{- end -}}

{{- define "dreamloom.trainerAccount" -}}
{{ .Values.training.serviceAccount | default (printf "%s-trainer" (include "dreamloom.fullname" .)) }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "triton") */}}
{{- define "dreamloom.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dreamloom.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dreamloom.labels" -}}
{{ include "dreamloom.selectorLabels" . }}
app.kubernetes.io/part-of: dreamloom
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* An image by digest when one is given (a tag can be moved to other code), else by tag. */}}
{{- define "dreamloom.imageReference" -}}
{{- if .image.digest -}}
{{ .image.repository }}@{{ .image.digest }}
{{- else -}}
{{ .image.repository }}:{{ .image.tag | default .appVersion }}
{{- end -}}
{{- end -}}

{{- define "dreamloom.image" -}}
{{ include "dreamloom.imageReference" (dict "image" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end -}}

{{- define "dreamloom.tritonImage" -}}
{{ include "dreamloom.imageReference" (dict "image" .Values.triton.image "appVersion" .Chart.AppVersion) }}
{{- end -}}

{{/* Pod security context: (dict "root" $ "uid" 1000) ; uid defaults to podSecurity.runAsUser */}}
{{- define "dreamloom.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid | default .root.Values.podSecurity.runAsUser }}
runAsGroup: {{ .uid | default .root.Values.podSecurity.fsGroup }}
fsGroup: {{ .uid | default .root.Values.podSecurity.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container security context; every container writes only to its volumes. */}}
{{- define "dreamloom.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "dreamloom.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Environment from the service Secrets: the mapping of dreamloom/k8s/secrets.py (a test keeps them equal). */}}
{{- define "dreamloom.serviceCredentials" -}}
{{- $mlflow := "dreamloom-mlflow" -}}
{{- $store := "dreamloom-object-store" -}}
{{- range $env, $ref := dict "MLFLOW_TRACKING_URI" (list $mlflow "tracking-uri") "MLFLOW_TRACKING_USERNAME" (list $mlflow "username") "MLFLOW_TRACKING_PASSWORD" (list $mlflow "password") "AWS_ACCESS_KEY_ID" (list $store "access-key") "AWS_SECRET_ACCESS_KEY" (list $store "secret-key") "MLFLOW_S3_ENDPOINT_URL" (list $store "endpoint") }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ index $ref 0 }}
      key: {{ index $ref 1 }}
      optional: true
{{- end }}
{{- end -}}

{{/* The GPU scheduling of a pod: (dict "gpus" N "nodeSelector" {} "tolerations" []) */}}
{{- define "dreamloom.gpuScheduling" -}}
{{- $selector := .nodeSelector | default dict -}}
{{- $tolerations := .tolerations | default list -}}
{{- if gt (int .gpus) 0 -}}
{{- $selector = merge (dict "nvidia.com/gpu.present" "true") $selector -}}
{{- $tolerations = append $tolerations (dict "key" "nvidia.com/gpu" "operator" "Exists" "effect" "NoSchedule") -}}
{{- end -}}
{{- with $selector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "dreamloom.mlflowHost" -}}
{{ include "dreamloom.fullname" . }}-mlflow
{{- end -}}

{{- define "dreamloom.postgresHost" -}}
{{ .Values.mlflow.postgresHost | default (printf "%s-postgresql" (include "dreamloom.fullname" .)) }}
{{- end -}}

{{- define "dreamloom.minioHost" -}}
{{ include "dreamloom.fullname" . }}-minio
{{- end -}}

{{/* A Ray node's pod template, as dreamloom.k8s.rayjob._pod renders it:
     (dict "root" $ "container" NAME "cpu" C "memory" M "gpus" N) */}}
{{- define "dreamloom.rayPod" -}}
{{- $root := .root -}}
{{- $resources := dict "cpu" .cpu "memory" .memory -}}
{{- if gt (int .gpus) 0 }}{{ $_ := set $resources "nvidia.com/gpu" (toString .gpus) }}{{ end -}}
spec:
  serviceAccountName: {{ include "dreamloom.trainerAccount" $root }}
  automountServiceAccountToken: false
  {{- include "dreamloom.imagePullSecrets" $root | nindent 2 }}
  securityContext:
    {{- include "dreamloom.podSecurityContext" (dict "root" $root) | nindent 4 }}
  {{- if gt (int .gpus) 0 }}
  {{- include "dreamloom.gpuScheduling" (dict "gpus" .gpus "nodeSelector" $root.Values.training.workers.nodeSelector "tolerations" $root.Values.training.workers.tolerations) | nindent 2 }}
  {{- end }}
  containers:
    - name: {{ .container }}
      image: {{ include "dreamloom.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      resources:
        requests:
          {{- toYaml $resources | nindent 10 }}
        limits:
          {{- toYaml $resources | nindent 10 }}
      env:
        - name: DREAMLOOM_HOME
          value: /data/dreamloom
        {{- include "dreamloom.serviceCredentials" $root | nindent 8 }}
      volumeMounts:
        - {name: data, mountPath: /data}
        - {name: shm, mountPath: /dev/shm}
        - {name: tmp, mountPath: /tmp}
      securityContext:
        {{- include "dreamloom.containerSecurityContext" $root | nindent 8 }}
  volumes:
    - name: data
      persistentVolumeClaim: {claimName: {{ include "dreamloom.dataClaim" $root }}}
    - name: shm
      emptyDir: {medium: Memory}
    - name: tmp
      emptyDir: {}
{{- end -}}

{{/* Triton APIs that need the admin key (keep in step with dreamloom.serving.server.RESTRICTED_APIS). */}}
{{- define "dreamloom.tritonRestrictedApis" -}}
model-repository,model-config,shared-memory,statistics,trace,logging
{{- end }}
