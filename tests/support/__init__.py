"""Harness for end-to-end tests: real Alertmanager, Prometheus and PostgreSQL on 127.0.0.1."""
