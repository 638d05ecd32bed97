"""Fabric tasks that put MLflow into production on Debian/Ubuntu servers."""
