"""MLflow Projects run on training hosts against the tracking server."""
