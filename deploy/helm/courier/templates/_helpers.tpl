{{/*
Names and labels.
*/}}
{{- define "courier.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "courier.fullname" -}}
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

{{/* What Services, the PDB and the spread select pods by: the kustomize base's selector too. */}}
{{- define "courier.selectorLabels" -}}
app.kubernetes.io/name: {{ include "courier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "courier.labels" -}}
{{ include "courier.selectorLabels" . }}
app.kubernetes.io/part-of: courier
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "courier.tlsSecret" -}}
{{- default (printf "%s-tls" (include "courier.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{- define "courier.authSecret" -}}
{{- default (printf "%s-auth" (include "courier.fullname" .)) .Values.auth.secretName }}
{{- end }}

{{/* One gateway holds the embedded log: no replicas beside it, nothing to scale. */}}
{{- define "courier.embedded" -}}
{{- if eq .Values.backend.kind "embedded" }}true{{ end }}
{{- end }}

{{/*
courier.toml, as a dict serialised to JSON (templates share values only as text): what the values
say, with .Values.config merged over it. The ConfigMap writes it as TOML; the Deployment reads
shutdown.grace from it.
*/}}
{{- define "courier.config" -}}
{{- $v := .Values }}
{{- $config := dict "region" $v.region }}
{{- $backend := $v.backend }}
{{- if eq $backend.kind "embedded" }}
{{- $_ := set $config "log" (dict "kind" "embedded" "data_dir" "/var/lib/courier") }}
{{- else if eq $backend.kind "kafka" }}
{{- $_ := set $config "log" (include "courier.kafka" (merge (dict "kind" "kafka") $backend.kafka) | fromJson) }}
{{- else if eq $backend.kind "regions" }}
{{- $r := $backend.regions }}
{{- $clusters := dict }}
{{- range $name, $cluster := $r.clusters }}
{{- $_ := set $clusters $name (include "courier.kafka" $cluster | fromJson) }}
{{- end }}
{{- if not (hasKey $clusters $v.region) }}
{{- fail (printf "region %q is not one of backend.regions.clusters (%s)" $v.region (keys $clusters | sortAlpha | join ", ")) }}
{{- end }}
{{- $_ := set $config "log" (dict "kind" "regions" "mode" $r.mode "replication_policy" $r.replicationPolicy "replication_separator" $r.replicationSeparator "regions" $clusters) }}
{{- else }}
{{- fail (printf "backend.kind %q: embedded, kafka or regions" $backend.kind) }}
{{- end }}

{{- $l := $v.listeners }}
{{- $grpc := dict "listen" (printf "0.0.0.0:%d" (int $l.grpc)) }}
{{- $mqtt := dict "listen" (printf "0.0.0.0:%d" (int $l.mqtt)) }}
{{- with $l.mqttWebsocket }}
{{- $_ := set $mqtt "websocket_listen" (printf "0.0.0.0:%d" (int .)) }}
{{- end }}
{{- $amqp := dict "listen" (printf "0.0.0.0:%d" (int $l.amqp)) }}
{{- $http := dict "listen" (printf "0.0.0.0:%d" (int $l.http)) }}
{{- if $v.tls.enabled }}
{{- $p := $v.tls.ports }}
{{- $_ := set $grpc "tls" (include "courier.tlsTable" $p.grpc | fromJson) }}
{{- $mqttTls := include "courier.tlsTable" $p.mqtt | fromJson }}
{{- with $p.mqttWebsocket }}
{{- $_ := set $mqttTls "websocket_listen" (printf "0.0.0.0:%d" (int .)) }}
{{- end }}
{{- $_ := set $mqtt "tls" $mqttTls }}
{{- $_ := set $amqp "tls" (include "courier.tlsTable" $p.amqp | fromJson) }}
{{- $_ := set $http "tls" (include "courier.tlsTable" $p.http | fromJson) }}
{{- end }}
{{- $_ := set $config "grpc" $grpc }}
{{- $_ := set $config "mqtt" $mqtt }}
{{- $_ := set $config "amqp" $amqp }}
{{- $_ := set $config "http" $http }}

{{- $auth := dict }}
{{- if $v.auth.enabled }}
{{- with $v.auth.usersKey }}
{{- $_ := set $auth "users_file" (printf "/etc/courier/auth/%s" .) }}
{{- end }}
{{- with $v.auth.policyKey }}
{{- $_ := set $auth "policy_file" (printf "/etc/courier/auth/%s" .) }}
{{- end }}
{{- with $v.auth.jwt }}
{{- $_ := set $auth "jwt" (deepCopy .) }}
{{- end }}
{{- end }}
{{- if not (kindIs "invalid" $v.auth.allowAnonymous) }}
{{- $_ := set $auth "allow_anonymous" $v.auth.allowAnonymous }}
{{- end }}
{{- if $auth }}
{{- $_ := set $config "auth" $auth }}
{{- end }}
{{- $_ := set $config "shutdown" (dict "grace" $v.shutdown.grace) }}

{{- /* Ports come from listeners and tls.ports alone, which the container and Services use too. */}}
{{- $extra := deepCopy (default dict $v.config) }}
{{- range $frontEnd := list "grpc" "mqtt" "amqp" "http" }}
{{- $table := get $extra $frontEnd }}
{{- if kindIs "map" $table }}
{{- $tls := get $table "tls" }}
{{- if or (hasKey $table "listen") (hasKey $table "websocket_listen") (and (kindIs "map" $tls) (or (hasKey $tls "listen") (hasKey $tls "websocket_listen"))) }}
{{- fail (printf "config.%s sets a listen address: set listeners (and tls.ports) instead, which the container and Service ports follow" $frontEnd) }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson (mergeOverwrite $config $extra) }}
{{- end }}

{{/* [log] for one Kafka cluster from {bootstrapServers, replicationFactor, properties} (+ kind). */}}
{{- define "courier.kafka" -}}
{{- $log := dict "bootstrap_servers" (required "a Kafka cluster needs bootstrapServers" .bootstrapServers) }}
{{- with .kind }}
{{- $_ := set $log "kind" . }}
{{- end }}
{{- with .replicationFactor }}
{{- $_ := set $log "replication_factor" (int .) }}
{{- end }}
{{- with .properties }}
{{- $_ := set $log "properties" (deepCopy .) }}
{{- end }}
{{- toJson $log }}
{{- end }}

{{/* A [<front end>.tls] table on a TLS port, with cert-manager's file names in the mounted Secret. */}}
{{- define "courier.tlsTable" -}}
{{- toJson (dict "listen" (printf "0.0.0.0:%d" (int .)) "cert" "/etc/courier/tls/tls.crt" "key" "/etc/courier/tls/tls.key") }}
{{- end }}

{{/*
shutdown.grace in whole seconds, rounded up: the humantime units h, m, s and ms ("20s", "1m30s").
*/}}
{{- define "courier.graceSeconds" -}}
{{- $grace := . | toString | nospace }}
{{- $parts := regexFindAll "[0-9]+(ms|s|m|h)" $grace -1 }}
{{- if or (not $parts) (ne (join "" $parts) $grace) }}
{{- fail (printf "shutdown.grace %q: write it in h, m, s or ms (20s, 1m30s)" $grace) }}
{{- end }}
{{- $seconds := dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 }}
{{- $total := 0.0 }}
{{- range $parts }}
{{- $number := regexFind "^[0-9]+" . }}
{{- $total = addf $total (mulf (float64 $number) (get $seconds (trimPrefix $number .))) }}
{{- end }}
{{- ceil $total | int }}
{{- end }}

{{/*
TOML, written by hand because Helm's toToml writes every number from values as a float (3.0),
which the gateway's integer keys refuse. A table: its plain keys, then its tables and arrays of
tables; null values are left out.
*/}}
{{- define "courier.toml.table" -}}
{{- $path := .path }}
{{- range $key, $value := .table }}
{{- if not (or (kindIs "invalid" $value) (kindIs "map" $value) (include "courier.toml.isTables" $value)) }}
{{ include "courier.toml.key" $key }} = {{ include "courier.toml.value" $value }}
{{- end }}
{{- end }}
{{- range $key, $value := .table }}
{{- $name := include "courier.toml.key" $key }}
{{- $sub := ternary $name (printf "%s.%s" $path $name) (eq $path "") }}
{{- if kindIs "map" $value }}

[{{ $sub }}]
{{- include "courier.toml.table" (dict "table" $value "path" $sub) }}
{{- else if include "courier.toml.isTables" $value }}
{{- range $item := $value }}

[[{{ $sub }}]]
{{- include "courier.toml.table" (dict "table" $item "path" $sub) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Whether a value is a non-empty list of tables ([[name]] sections). */}}
{{- define "courier.toml.isTables" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) }}
{{- $all := true }}
{{- range . }}
{{- if not (kindIs "map" .) }}
{{- $all = false }}
{{- end }}
{{- end }}
{{- if $all }}true{{ end }}
{{- end }}
{{- end }}

{{/* A key: bare when TOML allows, else quoted ("security.protocol"). */}}
{{- define "courier.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/*
A value: strings quoted (JSON's escapes are TOML's), whole numbers as integers (numbers from
values reach templates as floats), lists and maps inline.
*/}}
{{- define "courier.toml.value" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ . }}
{{- else if kindIs "float64" . }}{{ if eq . (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) }}{{ . }}
{{- else if kindIs "slice" . }}[{{ range $i, $item := . }}{{ if $i }}, {{ end }}{{ include "courier.toml.value" $item }}{{ end }}]
{{- else if kindIs "map" . }}{ {{- range $i, $key := keys . | sortAlpha }}{{ if $i }},{{ end }} {{ include "courier.toml.key" $key }} = {{ include "courier.toml.value" (get $ $key) }}{{ end }} }
{{- else }}{{ fail (printf "courier.toml cannot hold %v (%s)" . (kindOf .)) }}
{{- end }}
{{- end }}
