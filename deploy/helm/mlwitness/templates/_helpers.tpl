{{/* Names. */}}
{{- define "mlwitness.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mlwitness.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mlwitness.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object; selector labels never change after install. */}}
{{- define "mlwitness.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlwitness.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mlwitness.labels" -}}
helm.sh/chart: {{ include "mlwitness.chart" . }}
{{ include "mlwitness.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: mlwitness
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mlwitness.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mlwitness.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mlwitness.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "mlwitness.upstream" -}}
{{- default (printf "127.0.0.1:%d" (int .Values.modelServer.grpcPort)) .Values.mlwitness.upstream }}
{{- end }}

{{/* Whether an init container copies the model file into an emptyDir. */}}
{{- define "mlwitness.fetchModel" -}}
{{- if and .Values.model.fetch.enabled (not .Values.model.existingClaim) }}true{{ end }}
{{- end }}

{{/*
Checks that JSON schema cannot express: the sidecar's ports must not collide with the
model server's, and the grace period must leave room for preStop + drain (in native
sidecar mode, after the model server has stopped).
*/}}
{{- define "mlwitness.validate" -}}
{{- $sidecar := list (int .Values.mlwitness.ports.inference) (int .Values.mlwitness.ports.audit) (int .Values.mlwitness.ports.metrics) }}
{{- if ne (len (uniq $sidecar)) 3 }}
{{- fail (printf "mlwitness.ports must be three different ports, got %v" $sidecar) }}
{{- end }}
{{- range .Values.modelServer.ports }}
{{- if has (int .containerPort) $sidecar }}
{{- fail (printf "modelServer port %d collides with an mlwitness port %v" (int .containerPort) $sidecar) }}
{{- end }}
{{- end }}
{{- if has (int .Values.modelServer.grpcPort) $sidecar }}
{{- fail (printf "modelServer.grpcPort %d collides with an mlwitness port" (int .Values.modelServer.grpcPort)) }}
{{- end }}
{{- $sidecarStop := add (int .Values.mlwitness.preStopSleepSeconds) (int (ceil .Values.mlwitness.drainTimeout)) }}
{{- $need := $sidecarStop }}
{{- if .Values.nativeSidecar }}
{{- $need = add $sidecarStop (int .Values.modelServer.preStopSleepSeconds) }}
{{- end }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $need) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed %d s: preStop sleeps + mlwitness.drainTimeout" (int .Values.terminationGracePeriodSeconds) (int $need)) }}
{{- end }}
{{- if and .Values.nativeSidecar (not (semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version)) }}
{{- fail (printf "nativeSidecar needs Kubernetes >= 1.29 (this cluster: %s)" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- end }}

{{/*
The mlwitness container. It is placed in `containers` (regular sidecar) or, with
nativeSidecar, in `initContainers` with restartPolicy Always.
*/}}
{{- define "mlwitness.container" -}}
{{- $ports := .Values.mlwitness.ports -}}
{{- $probes := .Values.mlwitness.probes -}}
- name: mlwitness
  image: {{ include "mlwitness.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .Values.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  # ENTRYPOINT ["mlwitness"]; these args replace the image's CMD ["serve"].
  args:
    - serve
    - --config=/etc/mlwitness/mlwitness.toml
    - --model=/models/{{ .Values.model.path }}
    - --model-name={{ .Values.mlwitness.modelName }}
    - --model-version={{ .Values.mlwitness.modelVersion }}
    - --upstream={{ include "mlwitness.upstream" . }}
    - --ledger={{ .Values.ledger.mountPath }}/$(POD_NAME).duckdb
    - --host={{ .Values.mlwitness.host }}
    - --port={{ $ports.inference }}
    - --audit-port={{ $ports.audit }}
    - --metrics-port={{ $ports.metrics }}
    - --drain-timeout={{ .Values.mlwitness.drainTimeout }}
    {{- range .Values.mlwitness.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef: {fieldPath: metadata.name}
    {{- with .Values.mlwitness.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - {name: inference, containerPort: {{ $ports.inference }}, protocol: TCP}
    - {name: audit, containerPort: {{ $ports.audit }}, protocol: TCP}
    - {name: metrics, containerPort: {{ $ports.metrics }}, protocol: TCP}
  startupProbe:
    {{- if .Values.nativeSidecar }}
    # The model server starts only once this passes, and the gRPC health status waits for
    # the model server: probe "listening" instead.
    tcpSocket: {port: {{ $ports.inference }}}
    {{- else }}
    grpc: {port: {{ $ports.inference }}}
    {{- end }}
    {{- toYaml $probes.startup | nindent 4 }}
  readinessProbe:
    grpc: {port: {{ $ports.inference }}}
    {{- toYaml $probes.readiness | nindent 4 }}
  livenessProbe:
    grpc: {port: {{ $ports.inference }}}
    {{- if .Values.nativeSidecar }}
    {{- $startupBudget := mul (int $probes.startup.periodSeconds) (int $probes.startup.failureThreshold) }}
    {{- $nativeThreshold := max (int $probes.liveness.failureThreshold) (div $startupBudget (int $probes.liveness.periodSeconds)) }}
    {{- toYaml (merge (dict "failureThreshold" $nativeThreshold) $probes.liveness) | nindent 4 }}
    {{- else }}
    {{- toYaml $probes.liveness | nindent 4 }}
    {{- end }}
  {{- if .Values.mlwitness.preStopSleepSeconds }}
  lifecycle:
    preStop:
      exec: {command: ["sleep", "{{ .Values.mlwitness.preStopSleepSeconds }}"]}
  {{- end }}
  resources:
    {{- toYaml .Values.mlwitness.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.mlwitness.securityContext | nindent 4 }}
  volumeMounts:
    - {name: models, mountPath: /models, readOnly: true}
    - {name: ledger, mountPath: {{ .Values.ledger.mountPath }}}
    - {name: config, mountPath: /etc/mlwitness, readOnly: true}
    - {name: tmp, mountPath: /tmp}
{{- end }}
