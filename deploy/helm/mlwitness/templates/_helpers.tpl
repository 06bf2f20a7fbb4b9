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

{{/* The port the kubelet's gRPC probes dial: the plaintext health port, a server of its
own that callers of the other ports cannot exhaust (and that needs no TLS). */}}
{{- define "mlwitness.probePort" -}}
{{ .Values.mlwitness.ports.health }}
{{- end }}

{{/*
Checks that JSON schema cannot express: the sidecar's ports must differ from each other
and from the model server's, the grace period must leave room for preStop + drain (in
native sidecar mode, after the model server has stopped), and every enabled file must
have a source.
*/}}
{{- define "mlwitness.validate" -}}
{{- $p := .Values.mlwitness.ports }}
{{- $sidecar := list (int $p.inference) (int $p.audit) (int $p.metrics) (int $p.health) }}
{{- if ne (len (uniq $sidecar)) 4 }}
{{- fail (printf "mlwitness.ports must be four different ports (inference, audit, metrics, health), got %v" $sidecar) }}
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
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret: a Secret with tls.crt, tls.key (and ca.crt for tls.clientAuth)" }}
{{- end }}
{{- if and .Values.upstreamTls.enabled (not .Values.upstreamTls.existingSecret) }}
{{- fail "upstreamTls.enabled needs upstreamTls.existingSecret: a Secret with ca.crt (and tls.crt, tls.key for upstreamTls.clientCert)" }}
{{- end }}
{{- if and .Values.guards.enabled (not (trim .Values.guards.toml)) }}
{{- fail "guards.enabled needs the guard file: --set-file guards.toml=guards.toml (mlwitness guards suggest)" }}
{{- end }}
{{- if and .Values.baseline.enabled (not (trim .Values.baseline.json)) }}
{{- fail "baseline.enabled needs the baseline: --set-file baseline.json=baseline.json (mlwitness baseline)" }}
{{- end }}
{{- with .Values.archive.url }}
{{- if not (regexMatch "^(s3://[a-z0-9][a-z0-9.-]+[a-z0-9](/.*)?|file:///.+)$" .) }}
{{- fail (printf "archive.url must be s3://bucket/prefix or file:///dir, got %q" .) }}
{{- end }}
{{- end }}
{{- if and .Values.archive.url .Values.archive.register.enabled (not .Values.archive.register.catalog) (not .Values.archive.register.catalogSecret.name) }}
{{- fail "archive.register.enabled needs archive.register.catalog (a REST catalog URL or a SQLAlchemy URL) or archive.register.catalogSecret" }}
{{- end }}
{{- $files := add (len .Values.guards.toml) (len .Values.baseline.json) }}
{{- if gt $files 1000000 }}
{{- fail (printf "guards.toml + baseline.json are %d bytes; a ConfigMap holds at most 1 MiB (mlwitness baseline --sample-size makes it smaller)" $files) }}
{{- end }}
{{- end }}

{{/*
The mlwitness container. It is placed in `containers` (regular sidecar) or, with
nativeSidecar, in `initContainers` with restartPolicy Always.
*/}}
{{- define "mlwitness.container" -}}
{{- $ports := .Values.mlwitness.ports -}}
{{- $probes := .Values.mlwitness.probes -}}
{{- $probePort := include "mlwitness.probePort" . -}}
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
    - --health-port={{ $ports.health }}
    - --drain-timeout={{ .Values.mlwitness.drainTimeout }}
    {{- if .Values.guards.enabled }}
    - --guards=/etc/mlwitness/guards.toml
    {{- end }}
    {{- if .Values.baseline.enabled }}
    - --baseline=/etc/mlwitness/baseline.json
    {{- end }}
    {{- if .Values.tls.enabled }}
    - --tls-cert=/etc/mlwitness/tls/tls.crt
    - --tls-key=/etc/mlwitness/tls/tls.key
    {{- if .Values.tls.clientAuth }}
    - --tls-client-ca=/etc/mlwitness/tls/ca.crt
    {{- end }}
    {{- end }}
    {{- if .Values.upstreamTls.enabled }}
    - --upstream-ca=/etc/mlwitness/upstream-tls/ca.crt
    {{- if .Values.upstreamTls.clientCert }}
    - --upstream-cert=/etc/mlwitness/upstream-tls/tls.crt
    - --upstream-key=/etc/mlwitness/upstream-tls/tls.key
    {{- end }}
    {{- end }}
    {{- if .Values.auditAccess.existingSecret }}
    - --audit-access=/etc/mlwitness/access/audit.toml
    {{- end }}
    {{- if .Values.inferenceAccess.existingSecret }}
    - --inference-access=/etc/mlwitness/access/inference.toml
    {{- end }}
    {{- if .Values.hashKey.existingSecret }}
    - --hash-key=/etc/mlwitness/hash-key/hash.key
    {{- end }}
    {{- with .Values.archive.url }}
    - --archive={{ . }}
    {{- end }}
    {{- range .Values.mlwitness.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef: {fieldPath: metadata.name}
    {{- include "mlwitness.archiveEnv" . | nindent 4 }}
    {{- with .Values.mlwitness.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- include "mlwitness.archiveEnvFrom" . | nindent 2 }}
  ports:
    - {name: inference, containerPort: {{ $ports.inference }}, protocol: TCP}
    - {name: audit, containerPort: {{ $ports.audit }}, protocol: TCP}
    - {name: metrics, containerPort: {{ $ports.metrics }}, protocol: TCP}
    - {name: health, containerPort: {{ $ports.health }}, protocol: TCP}
  # grpc.health.v1 on the plaintext health port: a server of its own, so callers of the
  # other ports cannot starve the probes (and the kubelet's gRPC probes speak no TLS).
  # Service "" is readiness: SERVING once the ledger is healthy and the upstream ready,
  # NOT_SERVING from SIGTERM on. Service "liveness" is SERVING while the process runs: an
  # unready model server takes the pod out of the endpoints but does not restart the
  # sidecar.
  startupProbe:
    {{- if .Values.nativeSidecar }}
    # The model server starts only once this passes, and the gRPC health status waits for
    # the model server: probe "listening" instead.
    tcpSocket: {port: {{ $probePort }}}
    {{- else }}
    grpc: {port: {{ $probePort }}}
    {{- end }}
    {{- toYaml $probes.startup | nindent 4 }}
  readinessProbe:
    grpc: {port: {{ $probePort }}}
    {{- toYaml $probes.readiness | nindent 4 }}
  livenessProbe:
    grpc: {port: {{ $probePort }}, service: liveness}
    {{- toYaml $probes.liveness | nindent 4 }}
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

{{/* The archive's standard AWS environment (endpoint, region), for the sidecar, the fleet
audit server and the register job. */}}
{{- define "mlwitness.archiveEnv" -}}
{{- if .Values.archive.url }}
{{- with .Values.archive.endpoint }}
- {name: AWS_ENDPOINT_URL, value: {{ . | quote }}}
{{- end }}
{{- with .Values.archive.region }}
- {name: AWS_REGION, value: {{ . | quote }}}
{{- end }}
{{- end }}
{{- end }}

{{/* The archive's credentials Secret, its keys as environment variables. */}}
{{- define "mlwitness.archiveEnvFrom" -}}
{{- if and .Values.archive.url .Values.archive.credentialsSecret }}
envFrom:
  - secretRef: {name: {{ .Values.archive.credentialsSecret }}}
{{- end }}
{{- end }}

{{/* Labels of the fleet audit server's pods: not the StatefulSet's selector labels. */}}
{{- define "mlwitness.fleetSelectorLabels" -}}
app.kubernetes.io/name: {{ include "mlwitness.name" . }}-fleet-audit
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
