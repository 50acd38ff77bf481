{{/* Names and labels. */}}
{{- define "flaghook.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "flaghook.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "flaghook.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "flaghook.secretName" -}}
{{- if .Values.existingSecret -}}{{ .Values.existingSecret }}{{- else -}}{{ include "flaghook.fullname" . }}{{- end -}}
{{- end -}}

{{/* The config file: values.config plus what the chart owns (addresses, upstream, token, store). */}}
{{- define "flaghook.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $proxy := get $cfg "proxy" | default dict -}}
{{- $_ := set $proxy "listen" (printf "0.0.0.0:%d" (int .Values.ports.proxy)) -}}
{{- if not (hasKey $proxy "upstream") -}}{{- $_ := set $proxy "upstream" "http://127.0.0.1:18000" -}}{{- end -}}
{{- $_ := set $cfg "proxy" $proxy -}}
{{- $admin := get $cfg "admin" | default dict -}}
{{- $_ := set $admin "listen" (printf "0.0.0.0:%d" (int .Values.ports.admin)) -}}
{{- if or .Values.adminToken .Values.existingSecret -}}{{- $_ := set $admin "token" "file:/etc/flaghook/secrets/admin-token" -}}{{- end -}}
{{- $_ := set $cfg "admin" $admin -}}
{{/* The store lives on the data volume: a PVC with persistence, else an emptyDir (kept across
     container restarts, not across pod deletion). */}}
{{- $store := get $cfg "store" | default dict -}}
{{- $_ := set $store "path" "/var/lib/flaghook/flaghook.redb" -}}
{{- $_ := set $cfg "store" $store -}}
{{/* Git caches on their own emptyDir: the root filesystem is read-only. */}}
{{- $gitsync := get $cfg "gitsync" | default dict -}}
{{- if not (get $gitsync "workdir") -}}{{- $_ := set $gitsync "workdir" "/var/cache/flaghook/git" -}}{{- end -}}
{{- $_ := set $cfg "gitsync" $gitsync -}}
{{/* Cluster mode: the Redis URL and password come from a Secret through the environment
     (FLAGHOOK_REDIS_URL, FLAGHOOK_REDIS_PASSWORD: see flaghook.container). */}}
{{- $cl := .Values.cluster | default dict -}}
{{- if and $cl.redisUrl $cl.existingSecret -}}
{{- fail "cluster: set redisUrl or existingSecret, not both" -}}
{{- end -}}
{{- if and $cl.password $cl.passwordExistingSecret -}}
{{- fail "cluster: set password or passwordExistingSecret, not both" -}}
{{- end -}}
{{- $secrets := .Values.secrets | default dict -}}
{{- if and (not .Values.existingSecret) (or (and $cl.redisUrl (hasKey $secrets "redis-url")) (and $cl.password (hasKey $secrets "redis-password"))) -}}
{{- fail "secrets: the keys redis-url and redis-password are the chart's own in cluster mode (cluster.redisUrl, cluster.password)" -}}
{{- end -}}
{{- $cluster := get $cfg "cluster" | default dict -}}
{{- if or $cl.redisUrl $cl.existingSecret -}}{{- $_ := set $cluster "redis_url" "env:FLAGHOOK_REDIS_URL" -}}{{- end -}}
{{- if or $cl.password $cl.passwordExistingSecret -}}
{{- if not (get $cluster "redis_url") -}}
{{- fail "cluster.password needs cluster.redisUrl or cluster.existingSecret" -}}
{{- end -}}
{{- $_ := set $cluster "password" "env:FLAGHOOK_REDIS_PASSWORD" -}}
{{- end -}}
{{- if $cluster -}}{{- $_ := set $cfg "cluster" $cluster -}}{{- end -}}
{{- $changelog := get $cfg "changelog" | default dict -}}
{{- if and (gt (int .Values.replicaCount) 1) (not (get $cluster "redis_url")) (ne (get $changelog "follow" | default "all") "proxied") -}}
{{- fail "replicaCount > 1: every replica would follow the same Flagr changelog and send each change once per replica. Set cluster.redisUrl or cluster.existingSecret (cluster mode: the replicas share one Redis and send each change once), or config.changelog.follow=proxied (no Redis: each replica sends only the changes it proxied), or run one replica." -}}
{{- end -}}
{{- if not $cfg.webhooks -}}{{- $_ := unset $cfg "webhooks" -}}{{- end -}}
{{- if not $cfg.impression_webhooks -}}{{- $_ := unset $cfg "impression_webhooks" -}}{{- end -}}
{{- toPrettyJson $cfg -}}
{{- end -}}

{{/*
The flaghook container, for injection beside Flagr in any pod spec:
  containers:
    {{- include "flaghook.container" . | nindent 4 }}
It expects this chart's values (as a subchart: pass the subchart's context).
*/}}
{{- define "flaghook.container" -}}
- name: flaghook
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["--config", "/etc/flaghook/flaghook.json"]
  ports:
    - name: proxy
      containerPort: {{ .Values.ports.proxy }}
      protocol: TCP
    - name: admin
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
  livenessProbe:
    httpGet: {path: /healthz, port: admin}
    periodSeconds: 10
  readinessProbe:
    httpGet: {path: /readyz, port: admin}
    periodSeconds: 5
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: flaghook-config
      mountPath: /etc/flaghook/flaghook.json
      subPath: flaghook.json
      readOnly: true
    - name: flaghook-secrets
      mountPath: /etc/flaghook/secrets
      readOnly: true
    - name: flaghook-data
      mountPath: /var/lib/flaghook
    - name: flaghook-cache
      mountPath: /var/cache/flaghook
  env:
    # git may look for a home; the root filesystem is read-only.
    - name: HOME
      value: /var/cache/flaghook
    {{- range $k, $v := .Values.env }}
    - name: {{ $k }}
      value: {{ $v | quote }}
    {{- end }}
    {{- $cl := .Values.cluster | default dict }}
    {{- if or $cl.redisUrl $cl.existingSecret }}
    # cluster.redis_url = "env:FLAGHOOK_REDIS_URL"
    - name: FLAGHOOK_REDIS_URL
      valueFrom:
        secretKeyRef:
          {{- if $cl.redisUrl }}
          name: {{ include "flaghook.fullname" . }}
          key: redis-url
          {{- else }}
          name: {{ $cl.existingSecret }}
          key: {{ $cl.existingSecretKey | default "redis-url" }}
          {{- end }}
    {{- end }}
    {{- if or $cl.password $cl.passwordExistingSecret }}
    # cluster.password = "env:FLAGHOOK_REDIS_PASSWORD"
    - name: FLAGHOOK_REDIS_PASSWORD
      valueFrom:
        secretKeyRef:
          {{- if $cl.password }}
          name: {{ include "flaghook.fullname" . }}
          key: redis-password
          {{- else }}
          name: {{ $cl.passwordExistingSecret }}
          key: {{ $cl.passwordExistingSecretKey | default "redis-password" }}
          {{- end }}
    {{- end }}
{{- end -}}

{{/* The volumes the container needs. */}}
{{- define "flaghook.volumes" -}}
- name: flaghook-config
  configMap:
    name: {{ include "flaghook.fullname" . }}
- name: flaghook-secrets
  secret:
    secretName: {{ include "flaghook.secretName" . }}
    optional: true
- name: flaghook-data
{{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "flaghook.fullname" . }}
{{- else }}
  emptyDir: {}
{{- end }}
- name: flaghook-cache
  emptyDir: {}
{{- end -}}

{{/* Seconds in a duration written as in flaghook's config ("20s", "1m", "500ms", "2h", 30). */}}
{{- define "flaghook.seconds" -}}
{{- $v := toString . -}}
{{- if regexMatch "^[0-9]+$" $v -}}{{ $v }}
{{- else if regexMatch "^[0-9]+ms$" $v -}}{{ add1 (div (int (trimSuffix "ms" $v)) 1000) }}
{{- else if regexMatch "^[0-9]+(\\.[0-9]+)?s$" $v -}}{{ ceil (float64 (trimSuffix "s" $v)) | int }}
{{- else if regexMatch "^[0-9]+m$" $v -}}{{ mul (int (trimSuffix "m" $v)) 60 }}
{{- else if regexMatch "^[0-9]+h$" $v -}}{{ mul (int (trimSuffix "h" $v)) 3600 }}
{{- else -}}{{- fail (printf "cannot read the duration %q for the grace period (use 500ms, 20s, 1.5s, 2m or 1h), or set terminationGracePeriodSeconds" $v) -}}
{{- end -}}
{{- end -}}

{{/* The pod's grace period: flaghook's own shutdown (drain, then deliver) plus a margin. */}}
{{- define "flaghook.terminationGracePeriodSeconds" -}}
{{- if .Values.terminationGracePeriodSeconds -}}
{{- .Values.terminationGracePeriodSeconds -}}
{{- else -}}
{{- $proxy := get .Values.config "proxy" | default dict -}}
{{- $delivery := get .Values.config "delivery" | default dict -}}
{{- $grace := include "flaghook.seconds" (get $proxy "shutdown_grace" | default "20s") | int -}}
{{- $deadline := include "flaghook.seconds" (get $delivery "shutdown_deadline" | default "20s") | int -}}
{{- add $grace $deadline 10 -}}
{{- end -}}
{{- end -}}

{{/* Pod annotations: config checksum (rolls the pod on change) and Prometheus scraping. */}}
{{- define "flaghook.podAnnotations" -}}
checksum/config: {{ include "flaghook.config" . | sha256sum }}
{{- $cl := .Values.cluster | default dict }}
checksum/secret: {{ printf "%v%v%v%v" .Values.secrets .Values.adminToken ($cl.redisUrl | default "") ($cl.password | default "") | sha256sum }}
{{- if .Values.metrics.annotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.ports.admin | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}
