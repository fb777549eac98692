{{/*
Names, labels and the small decisions every template shares.
*/}}

{{/* Chart name, overridable. */}}
{{- define "incident-sla-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: <release>-<chart>, or the release name when it already contains it. */}}
{{- define "incident-sla-sidecar.fullname" -}}
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

{{/* Namespace of every namespaced object. */}}
{{- define "incident-sla-sidecar.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{/* chart label value */}}
{{- define "incident-sla-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable for the lifetime of a release. */}}
{{- define "incident-sla-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "incident-sla-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels. */}}
{{- define "incident-sla-sidecar.labels" -}}
helm.sh/chart: {{ include "incident-sla-sidecar.chart" . }}
{{ include "incident-sla-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: incident-sla-sidecar
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "incident-sla-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "incident-sla-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference: repository with digest when pinned, else with the tag. */}}
{{- define "incident-sla-sidecar.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* "true" when the store is the embedded SQLite database (one replica, one volume). */}}
{{- define "incident-sla-sidecar.sqlite" -}}
{{- $url := dig "store" "url" "" .Values.config }}
{{- if and (not .Values.storeUrlSecret.name) (not (hasPrefix "postgresql://" $url)) (not (hasPrefix "postgres://" $url)) }}true{{ end }}
{{- end }}

{{/* "true" when tokens are required, i.e. authentication is not disabled. */}}
{{- define "incident-sla-sidecar.auth" -}}
{{- if not (dig "server" "insecure_disable_auth" false .Values.config) }}true{{ end }}
{{- end }}

{{/* "true" when the pod mounts secret files (tokens or PagerDuty keys). */}}
{{- define "incident-sla-sidecar.hasSecretFiles" -}}
{{- if or (include "incident-sla-sidecar.auth" .) .Values.pagerduty.enabled .Values.slack.enabled .Values.jira.enabled .Values.webhooks.endpoints }}true{{ end }}
{{- end }}

{{/* Name of the Secret holding tokens and PagerDuty keys. */}}
{{- define "incident-sla-sidecar.secretName" -}}
{{- default (include "incident-sla-sidecar.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* Where things are mounted in the container. */}}
{{- define "incident-sla-sidecar.configDir" -}}/etc/incident-sla-sidecar/config{{- end }}
{{- define "incident-sla-sidecar.secretsDir" -}}/etc/incident-sla-sidecar/secrets{{- end }}
{{- define "incident-sla-sidecar.usersDir" -}}/etc/incident-sla-sidecar/users{{- end }}
{{- define "incident-sla-sidecar.presetsDir" -}}/etc/incident-sla-sidecar/rules{{- end }}
{{- define "incident-sla-sidecar.dataDir" -}}/var/lib/incident-sla-sidecar{{- end }}
{{- define "incident-sla-sidecar.tlsDir" -}}/etc/incident-sla-sidecar/tls{{- end }}
{{- define "incident-sla-sidecar.clientCaDir" -}}/etc/incident-sla-sidecar/tls-client-ca{{- end }}

{{/*
The sidecar's config.yaml: the user's `config` with the keys the chart owns filled in
(listen address, secret file paths, rules file, default SQLite URL, PagerDuty section).
*/}}
{{- define "incident-sla-sidecar.configYaml" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $secrets := include "incident-sla-sidecar.secretsDir" . }}
{{- $server := get $cfg "server" | default dict }}
{{- $_ := set $server "listen" (printf "0.0.0.0:%v" .Values.service.port) }}
{{- if include "incident-sla-sidecar.auth" . }}
{{- $_ := set $server "webhook_token_file" (printf "%s/webhook-token" $secrets) }}
{{- $_ := set $server "api_token_file" (printf "%s/api-token" $secrets) }}
{{- end }}
{{- if include "incident-sla-sidecar.tls" . }}
{{- $_ := set $server "tls_cert_file" (printf "%s/%s" (include "incident-sla-sidecar.tlsDir" .) .Values.tls.certKey) }}
{{- $_ := set $server "tls_key_file" (printf "%s/%s" (include "incident-sla-sidecar.tlsDir" .) .Values.tls.keyKey) }}
{{- if .Values.tls.clientAuth }}
{{- $_ := set $server "tls_client_ca_file" (printf "%s/%s" (include "incident-sla-sidecar.clientCaDir" .) .Values.tls.clientCaKey) }}
{{- end }}
{{- end }}
{{- $_ := set $cfg "server" $server }}
{{- $store := get $cfg "store" | default dict }}
{{- if .Values.storeUrlSecret.name }}
{{- $_ := unset $store "url" }}
{{- else if not (get $store "url") }}
{{- $_ := set $store "url" (printf "sqlite:///%s/sidecar.db" (include "incident-sla-sidecar.dataDir" .)) }}
{{- end }}
{{- $_ := set $cfg "store" $store }}
{{- if .Values.rules.custom }}
{{- $_ := set $cfg "rules" (dict "file" "rules.yaml") }}
{{- else }}
{{- $_ := set $cfg "rules" (dict "file" (printf "%s/%s.yaml" (include "incident-sla-sidecar.presetsDir" .) .Values.rules.preset)) }}
{{- end }}
{{- $am := get $cfg "alertmanager" | default dict }}
{{- if not (get $am "url") }}
{{- $_ := unset $cfg "alertmanager" }}
{{- else if not (get $am "silence_comment_prefix") }}
{{- $_ := unset $am "silence_comment_prefix" }}
{{- end }}
{{- if not (get $server "external_url") }}
{{- $_ := unset $server "external_url" }}
{{- end }}
{{- with .Values.readers.usersSecret }}
{{- $_ := set $server "web_config_file" (printf "%s/%s" (include "incident-sla-sidecar.usersDir" $) $.Values.readers.usersSecretKey) }}
{{- end }}
{{- with .Values.readers.trustedUserHeader }}
{{- $_ := set $server "trusted_user_header" . }}
{{- end }}
{{- if .Values.pagerduty.enabled }}
{{- $pd := deepCopy (.Values.pagerduty.settings | default dict) }}
{{- $_ := set $pd "events_url" .Values.pagerduty.eventsUrl }}
{{- $_ := set $pd "api_url" .Values.pagerduty.apiUrl }}
{{- $_ := set $pd "routing_key_file" (printf "%s/pagerduty-routing-key" $secrets) }}
{{- $_ := set $pd "api_token_file" (printf "%s/pagerduty-api-token" $secrets) }}
{{- $_ := set $pd "webhook_secret_file" (printf "%s/pagerduty-webhook-secret" $secrets) }}
{{- $teamKeys := dict }}
{{- range $team, $key := .Values.pagerduty.teamRoutingKeys }}
{{- $_ := set $teamKeys $team (dict "file" (printf "%s/pagerduty-team-%s" $secrets $team)) }}
{{- end }}
{{- if $teamKeys }}
{{- $_ := set $pd "team_routing_keys" $teamKeys }}
{{- end }}
{{- $tierKeys := dict }}
{{- range $tier, $key := .Values.pagerduty.tierRoutingKeys }}
{{- $_ := set $tierKeys $tier (dict "file" (printf "%s/pagerduty-tier-%s" $secrets $tier)) }}
{{- end }}
{{- if $tierKeys }}
{{- $_ := set $pd "tier_routing_keys" $tierKeys }}
{{- end }}
{{- $_ := set $cfg "pagerduty" $pd }}
{{- else }}
{{- $_ := unset $cfg "pagerduty" }}
{{- end }}
{{- if .Values.slack.enabled }}
{{- $slack := deepCopy (.Values.slack.settings | default dict) }}
{{- $_ := set $slack "token_file" (printf "%s/slack-token" $secrets) }}
{{- $_ := set $slack "api_url" .Values.slack.apiUrl }}
{{- $c := .Values.slack.channels }}
{{- $channels := dict "teams" ($c.teams | default dict) "severities" ($c.severities | default dict) "stakeholder_severities" ($c.stakeholderSeverities | default list) }}
{{- with $c.default }}{{ $_ := set $channels "default" . }}{{ end }}
{{- with $c.stakeholders }}{{ $_ := set $channels "stakeholders" . }}{{ end }}
{{- $_ := set $slack "channels" $channels }}
{{- $_ := set $slack "users" (.Values.slack.users | default dict) }}
{{- $_ := set $cfg "slack" $slack }}
{{- end }}
{{- if .Values.jira.enabled }}
{{- $jira := deepCopy (.Values.jira.settings | default dict) }}
{{- $_ := set $jira "url" (required "jira.url is required when jira.enabled" .Values.jira.url) }}
{{- $_ := set $jira "email" (required "jira.email is required when jira.enabled" .Values.jira.email) }}
{{- $_ := set $jira "project" (required "jira.project is required when jira.enabled" .Values.jira.project) }}
{{- $_ := set $jira "issue_type" .Values.jira.issueType }}
{{- $_ := set $jira "api_token_file" (printf "%s/jira-api-token" $secrets) }}
{{- $_ := set $cfg "jira" $jira }}
{{- end }}
{{- $hooks := list }}
{{- range .Values.webhooks.endpoints }}
{{- $hook := dict "name" .name "url" .url "secret_file" (printf "%s/webhook-%s" $secrets .name) }}
{{- with .events }}{{ $_ := set $hook "events" . }}{{ end }}
{{- $hooks = append $hooks $hook }}
{{- end }}
{{- if $hooks }}
{{- $_ := set $cfg "webhooks" $hooks }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* "true" when the sidecar serves HTTPS (server.tls_* files from tls.secretName). */}}
{{- define "incident-sla-sidecar.tls" -}}
{{- if .Values.tls.enabled }}
{{- if not .Values.tls.secretName }}
{{- fail "tls.enabled needs tls.secretName: the Secret with the certificate and its key" }}
{{- end }}true
{{- end }}
{{- end }}

{{/*
A probe for the container: with TLS an httpGet probe asks over HTTPS (the kubelet does not verify
the certificate); with mTLS it becomes a TCP check, since the kubelet has no client certificate.
*/}}
{{- define "incident-sla-sidecar.probe" -}}
{{- $probe := deepCopy .probe }}
{{- if and (include "incident-sla-sidecar.tls" .root) $probe.httpGet }}
{{- if .root.Values.tls.clientAuth }}
{{- $_ := set $probe "tcpSocket" (dict "port" $probe.httpGet.port) }}
{{- $_ := unset $probe "httpGet" }}
{{- else }}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" }}
{{- end }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/* Base URL of the runbooks the shipped alert rules link to (no trailing slash). */}}
{{- define "incident-sla-sidecar.runbookBaseUrl" -}}
{{- if .Values.prometheusRule.runbookBaseUrl }}
{{- .Values.prometheusRule.runbookBaseUrl | trimSuffix "/" }}
{{- else if dig "server" "external_url" "" .Values.config }}
{{- printf "%s/runbooks" (dig "server" "external_url" "" .Values.config | trimSuffix "/") }}
{{- else }}
{{- $scheme := ternary "https" "http" (eq (include "incident-sla-sidecar.tls" .) "true") }}
{{- printf "%s://%s.%s.svc:%v/runbooks" $scheme (include "incident-sla-sidecar.fullname" .) (include "incident-sla-sidecar.namespace" .) .Values.service.port }}
{{- end }}
{{- end }}
