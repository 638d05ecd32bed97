"""The tracking server's REST API from this machine, with the user's credentials and the server's certificate."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tasks.credentials import read_credentials


class TrackingApiError(Exception):
    """The server can't be reached, refused the user, or answered an error; the message says which."""


@dataclass(frozen=True)
class TrackingApi:
    uri: str
    auth: tuple[str, str] | None = None
    verify: str | bool = True

    @classmethod
    def for_user(cls, uri: str, credentials: Path) -> "TrackingApi":
        """Credentials from the MLflow client's file (none when it holds none); the learned certificate if set."""
        user, password = read_credentials(credentials)
        return cls(uri.rstrip("/"), (user, password) if user else None, os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True)

    def call(self, method: str, endpoint: str, **arguments) -> dict:
        import requests

        url = f"{self.uri}/api/2.0/mlflow/{endpoint}"
        try:
            response = requests.request(method, url, auth=self.auth, verify=self.verify, timeout=30, **arguments)
        except requests.RequestException as error:
            raise TrackingApiError(f"{self.uri} can't be reached: {error}") from None
        if response.status_code in (401, 403):
            who = f"user {self.auth[0]}" if self.auth else "a request without credentials"
            raise TrackingApiError(f"{self.uri} refused {who} (HTTP {response.status_code}): "
                                   "check ~/.mlflow/credentials or pass --credentials FILE (`fab tracking-user --add NAME` makes one)")
        if response.status_code != 200:
            raise TrackingApiError(f"{self.uri}: {endpoint} answered HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    def run(self, run_id: str) -> dict:
        return self.call("GET", "runs/get", params={"run_id": run_id})["run"]["info"]

    def run_url(self, info: dict) -> str:
        return f"{self.uri}/#/experiments/{info['experiment_id']}/runs/{info['run_id']}"
