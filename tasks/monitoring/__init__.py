"""Monitoring: the exporters on every host, Prometheus on the monitor hosts, its alert rules."""
