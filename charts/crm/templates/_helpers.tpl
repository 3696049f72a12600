{{/*
Helpers shared by every template. Components are rendered by ranging over .Values.components; the
helpers below take a dict with "root" (the top-level context) and "name" (the component name).
*/}}

{{/* Fixed ports of docs/architecture.md (in cluster). */}}
{{- define "crm.grpcPort" -}}50051{{- end -}}
{{- define "crm.httpPort" -}}8080{{- end -}}

{{/* The services the gateway routes to: every component but the gateway, sorted. */}}
{{- define "crm.serviceNames" -}}
{{- $names := list -}}
{{- range $name, $_ := .Values.components -}}
{{- if ne $name "gateway" -}}{{- $names = append $names $name -}}{{- end -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* The gRPC services a component calls (JSON list): the gateway calls every service; a service
calls what components.<name>.calls lists. Each call sets <PREFIX>_<TARGET>_ADDR and is allowed by the
NetworkPolicies. */}}
{{- define "crm.calls" -}}
{{- if eq .name "gateway" -}}
{{- include "crm.serviceNames" .root -}}
{{- else -}}
{{- $c := include "crm.component" . | fromYaml -}}
{{- toJson (default list $c.calls) -}}
{{- end -}}
{{- end -}}

{{/* The components that call a service (JSON list). */}}
{{- define "crm.callers" -}}
{{- $root := .root -}}
{{- $target := .name -}}
{{- $callers := list -}}
{{- range $name, $_ := $root.Values.components -}}
{{- if has $target (include "crm.calls" (dict "root" $root "name" $name) | fromJsonArray) -}}
{{- $callers = append $callers $name -}}
{{- end -}}
{{- end -}}
{{- toJson $callers -}}
{{- end -}}

{{/* <release>-<suffix>, the name of every object of the release. */}}
{{- define "crm.fullname" -}}
{{- printf "%s-%s" .root.Release.Name .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Environment variable prefix of a process: CUSTOMER, ..., GATEWAY. */}}
{{- define "crm.prefix" -}}
{{- upper .name -}}
{{- end -}}

{{- define "crm.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "crm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "crm.selectorLabels" . }}
app.kubernetes.io/part-of: {{ .root.Chart.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* Labels common to every object of the release (used by the default-deny policy). */}}
{{- define "crm.releaseSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
The effective settings of one component: .Values.defaults deep-merged with .Values.components.<name>,
with image = .Values.image + defaults.image + components.<name>.image. Returned as YAML (use fromYaml).
*/}}
{{- define "crm.component" -}}
{{- $root := .root -}}
{{- $c := mergeOverwrite (deepCopy $root.Values.defaults) (deepCopy (get $root.Values.components .name)) -}}
{{- $_ := set $c "image" (mergeOverwrite (deepCopy $root.Values.image) (deepCopy (default dict $root.Values.defaults.image)) (deepCopy (default dict (get $root.Values.components .name).image))) -}}
{{- toYaml $c -}}
{{- end -}}

{{/* An image dict's reference: its ref if set (a full reference, as skaffold sets it), else
registry/repository:tag with the tag defaulting to the chart's appVersion. */}}
{{- define "crm.imageRef" -}}
{{- if .image.ref -}}
{{- .image.ref -}}
{{- else -}}
{{- $repo := .image.repository -}}
{{- if .image.registry -}}{{- $repo = printf "%s/%s" (trimSuffix "/" .image.registry) $repo -}}{{- end -}}
{{- printf "%s:%s" $repo (toString (default .root.Chart.AppVersion .image.tag)) -}}
{{- end -}}
{{- end -}}

{{- define "crm.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod and container security contexts (uid/gid 10001 is the images' user). */}}
{{- define "crm.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "crm.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Where migrations run. Production: Helm hook Jobs before the release's objects change (pre-install,
pre-upgrade), against the external databases. Evaluation: the database is itself an object of the
release, so nothing can run before it exists; each Deployment runs `crm-<name> migrate` as an init
container instead (the gateway refuses to serve an unmigrated database, so post-install hooks would
deadlock `helm install --wait`).
*/}}
{{- define "crm.migrationJobs" -}}
{{- if and .Values.hooks.migrations.enabled (not .Values.evaluation.enabled) -}}true{{- end -}}
{{- end -}}
{{- define "crm.migrationInitContainers" -}}
{{- if and .Values.hooks.migrations.enabled .Values.evaluation.enabled -}}true{{- end -}}
{{- end -}}

{{/* Phases of the hook Jobs: before the release's objects, or (evaluation: NATS is one of them) after. */}}
{{- define "crm.hookPhases" -}}
{{- if .Values.evaluation.enabled -}}post-install,post-upgrade{{- else -}}pre-install,pre-upgrade{{- end -}}
{{- end -}}

{{/* Secret holding a component's database URLs. */}}
{{- define "crm.databaseSecret" -}}
{{- $c := include "crm.component" . | fromYaml -}}
{{- if .root.Values.evaluation.enabled -}}
{{- include "crm.fullname" (dict "root" .root "name" "evaluation") -}}
{{- else -}}
{{- default .root.Values.externalDatabase.existingSecret $c.database.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "crm.signingKeySecret" -}}
{{- if .Values.gateway.signingKey.existingSecret -}}
{{- .Values.gateway.signingKey.existingSecret -}}
{{- else if .Values.evaluation.enabled -}}
{{- include "crm.fullname" (dict "root" . "name" "gateway-signing-key") -}}
{{- end -}}
{{- end -}}

{{- define "crm.signingKeyDir" -}}/var/run/secrets/crm/signing-key{{- end -}}

{{/*
Plain configuration of a component (docs/architecture.md), as a YAML map: the component's ConfigMap
data, and the env of its hook Jobs (which run before the ConfigMap exists).
*/}}
{{- define "crm.configEnv" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $c := include "crm.component" . | fromYaml -}}
{{- $prefix := include "crm.prefix" . -}}
{{- $env := dict -}}
{{- if $root.Values.evaluation.enabled -}}
{{- $_ := set $env "CRM_NATS_URL" (printf "nats://%s:4222" (include "crm.fullname" (dict "root" $root "name" "nats"))) -}}
{{- else if not $root.Values.externalNats.existingSecret -}}
{{- $_ := set $env "CRM_NATS_URL" $root.Values.externalNats.url -}}
{{- end -}}
{{- $_ := set $env "CRM_EVENTS_STREAM" $root.Values.config.eventsStream -}}
{{- $_ := set $env "CRM_JWKS_URL" (printf "http://%s:%s/.well-known/jwks.json" (include "crm.fullname" (dict "root" $root "name" "gateway")) (include "crm.httpPort" .)) -}}
{{- $_ := set $env "CRM_JWT_ISSUER" $root.Values.config.jwtIssuer -}}
{{- $_ := set $env "CRM_JWT_AUDIENCE" $root.Values.config.jwtAudience -}}
{{- $_ := set $env "CRM_LOG_LEVEL" $root.Values.config.logLevel -}}
{{- $_ := set $env "CRM_LOG_FORMAT" $root.Values.config.logFormat -}}
{{- $_ := set $env "CRM_DB_APP_ROLE" $root.Values.config.dbAppRole -}}
{{- $_ := set $env "OTEL_SERVICE_NAME" $name -}}
{{- with $root.Values.otel.endpoint -}}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" . -}}
{{- end -}}
{{- $_ := set $env (printf "%s_METRICS_PORT" $prefix) (toString $root.Values.metrics.port) -}}
{{- if eq $name "gateway" -}}
{{- $_ := set $env "GATEWAY_HOST" "0.0.0.0" -}}
{{- $_ := set $env "GATEWAY_PORT" (include "crm.httpPort" .) -}}
{{- $_ := set $env "GATEWAY_WORKERS" (toString $root.Values.gateway.workers) -}}
{{- $proxies := $root.Values.gateway.trustedProxies -}}
{{- if kindIs "invalid" $proxies -}}{{- $proxies = ternary 1 0 $root.Values.ingress.enabled -}}{{- end -}}
{{- $_ := set $env "GATEWAY_TRUSTED_PROXIES" (toString $proxies) -}}
{{- if include "crm.signingKeySecret" $root -}}
{{- $_ := set $env "GATEWAY_SIGNING_KEY_FILE" (printf "%s/%s" (include "crm.signingKeyDir" $root) $root.Values.gateway.signingKey.key) -}}
{{- end -}}
{{- else -}}
{{- $_ := set $env (printf "%s_GRPC_HOST" $prefix) "0.0.0.0" -}}
{{- $_ := set $env (printf "%s_GRPC_PORT" $prefix) (include "crm.grpcPort" $root) -}}
{{- end -}}
{{- range $svc := include "crm.calls" . | fromJsonArray -}}
{{- $_ := set $env (printf "%s_%s_ADDR" $prefix (upper $svc)) (printf "%s:%s" (include "crm.fullname" (dict "root" $root "name" $svc)) (include "crm.grpcPort" $root)) -}}
{{- end -}}
{{- range $k, $v := $c.env -}}
{{- $_ := set $env $k (toString $v) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/*
Environment taken from Secrets, as a YAML list: the database URL of the application role, with
"migration" true also the owner role's, and CRM_NATS_URL when it carries credentials.
*/}}
{{- define "crm.secretEnv" -}}
{{- $prefix := include "crm.prefix" . -}}
{{- $secret := include "crm.databaseSecret" . -}}
- name: {{ $prefix }}_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $prefix }}_DATABASE_URL
{{- if .migration }}
- name: {{ $prefix }}_MIGRATION_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $prefix }}_MIGRATION_DATABASE_URL
{{- end }}
{{- if and (eq .name "gateway") .root.Values.gateway.apiKeyPepper.existingSecret }}
- name: GATEWAY_API_KEY_PEPPER
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.gateway.apiKeyPepper.existingSecret }}
      key: {{ .root.Values.gateway.apiKeyPepper.key }}
{{- end }}
{{- if and (not .root.Values.evaluation.enabled) .root.Values.externalNats.existingSecret }}
- name: CRM_NATS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.externalNats.existingSecret }}
      key: {{ .root.Values.externalNats.existingSecretKey }}
{{- end }}
{{- end -}}

{{/* The configuration as a container env list (for hook Jobs). */}}
{{- define "crm.envList" -}}
{{- range $k, $v := include "crm.configEnv" . | fromYaml }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{ include "crm.secretEnv" . }}
{{- end -}}

{{/* Names of the hook Jobs' pods (label app.kubernetes.io/component). */}}
{{- define "crm.hookComponents" -}}
{{- $names := list -}}
{{- if include "crm.migrationJobs" . -}}
{{- range $name, $_ := .Values.components -}}{{- $names = append $names (printf "migrate-%s" $name) -}}{{- end -}}
{{- end -}}
{{- if .Values.nats.ensureStream.enabled -}}{{- $names = append $names "ensure-stream" -}}{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* A NetworkPolicy "to"/"from" list, or nothing (= any peer) when peers is empty. */}}
{{- define "crm.peers" -}}
{{- $key := .key -}}
{{- with .peers }}
{{ $key }}:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A hook Job: dict root, name (Job suffix and pod component), image (dict), command (list), env (YAML
list), weight, signingKey (mount the gateway's signing key, as the gateway itself has it). */}}
{{- define "crm.hookJob" -}}
{{- $root := .root -}}
{{- $labels := dict "root" $root "name" .name -}}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "crm.fullname" $labels }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "crm.labels" $labels | nindent 4 }}
  annotations:
    helm.sh/hook: {{ include "crm.hookPhases" $root }}
    helm.sh/hook-weight: {{ .weight | quote }}
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  backoffLimit: {{ $root.Values.hooks.backoffLimit }}
  activeDeadlineSeconds: {{ $root.Values.hooks.activeDeadlineSeconds }}
  template:
    metadata:
      labels:
        {{- include "crm.labels" $labels | nindent 8 }}
    spec:
      restartPolicy: Never
      serviceAccountName: {{ include "crm.fullname" (dict "root" $root "name" "hooks") }}
      automountServiceAccountToken: false
      securityContext:
        {{- include "crm.podSecurityContext" $root | nindent 8 }}
      {{- include "crm.imagePullSecrets" $root | nindent 6 }}
      containers:
        - name: {{ .name }}
          image: {{ include "crm.imageRef" (dict "root" $root "image" .image) }}
          imagePullPolicy: {{ .image.pullPolicy }}
          command:
            {{- toYaml .command | nindent 12 }}
          env:
            {{- .env | nindent 12 }}
          resources:
            {{- toYaml $root.Values.hooks.resources | nindent 12 }}
          securityContext:
            {{- include "crm.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if .signingKey }}
            - name: signing-key
              mountPath: {{ include "crm.signingKeyDir" $root }}
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- if .signingKey }}
        - name: signing-key
          secret:
            secretName: {{ include "crm.signingKeySecret" $root }}
            defaultMode: 0440
        {{- end }}
{{- end -}}
