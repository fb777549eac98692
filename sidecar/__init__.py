"""incident-sla-sidecar: Alertmanager notifications in, SLA-measured incidents out."""

__version__ = "0.1.0"
