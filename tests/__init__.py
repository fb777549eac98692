"""Test suite for incident-sla-sidecar."""
