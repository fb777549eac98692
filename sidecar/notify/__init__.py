"""Notifications out: one durable outbox, integrations, and one retry policy.

Shaped after Alertmanager's ``notify/``:

- an integration plans what a change of an incident sends
  (:mod:`~sidecar.notify.pagerduty`: the team's page, an escalation tier's
  page, acknowledge and resolve), run by the incident book inside the command
  that makes the change, so the rows are written in the same transaction;
- :mod:`~sidecar.notify.outbox` delivers what waits, in order per dedup key,
  within the integration's rate shared by every replica, and records each
  outcome before the key's next event;
- :mod:`~sidecar.notify.retry` is the one retry policy: an integration only
  classifies an answer (accepted, retry, rate limited, rejected).

The wire protocol of PagerDuty (event bodies, the HTTP clients, inbound
webhooks) lives in :mod:`sidecar.pagerduty`, shared with the inbound side.
"""
