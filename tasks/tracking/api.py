"""The tracking server's REST API from this machine, with the user's credentials and the server's certificate.

Plain urllib: `fab` pays neither requests' nor mlflow's import for a few JSON calls and downloads.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from tasks.credentials import TRACKING_CREDENTIALS, read_credentials

MAX_JSON_BYTES = 16 * 1024 * 1024
CHUNK = 1024 * 1024
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"


class TrackingApiError(Exception):
    """The server can't be reached, refused the user, or answered an error; the message says which."""

    def __init__(self, message: str, status: int = 0, error_code: str = "", server_message: str = ""):
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.server_message = server_message


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would carry our credentials to wherever the server points: treat it as an answer instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


@dataclass(frozen=True)
class TrackingApi:
    uri: str
    auth: tuple[str, str] | None = None
    verify: str | bool = True
    token: str = ""
    timeout: float = 30

    @classmethod
    def for_user(cls, uri: str, credentials: Path) -> "TrackingApi":
        """Credentials from the MLflow client's file (none when it holds none); the learned certificate if set."""
        user, password = read_credentials(credentials)
        return cls(uri.rstrip("/"), (user, password) if user else None, os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True)

    @classmethod
    def for_client(cls, uri: str) -> "TrackingApi":
        """What MLflow's own client would send: MLFLOW_TRACKING_USERNAME/PASSWORD over ~/.mlflow/credentials,
        MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_INSECURE_TLS."""
        file_user, file_password = read_credentials(Path(TRACKING_CREDENTIALS).expanduser())
        user = os.environ.get("MLFLOW_TRACKING_USERNAME") or file_user
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or file_password
        verify: str | bool = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            verify = False
        return cls(uri.rstrip("/"), (user, password) if user else None, verify, os.environ.get("MLFLOW_TRACKING_TOKEN", ""))

    def call(self, method: str, endpoint: str, params: dict | None = None, json_body: dict | None = None) -> dict:
        return self._json(method, f"/api/2.0/mlflow/{endpoint}", params, json_body)

    def artifact_listing(self, path: str) -> list[dict]:
        """One directory of the server's proxied artifact store (a path under its artifact root), as listed."""
        files = self._json("GET", ARTIFACTS, {"path": path}).get("files", [])
        if not isinstance(files, list):
            raise TrackingApiError(f"{self.uri}: the artifact listing of {path} is not a list")
        return files

    def download(self, path: str, size: int, into: BinaryIO) -> None:
        """GET a proxied artifact (a path under the server's artifact root); exactly `size` bytes or TrackingApiError."""
        received = 0
        with self._open("GET", f"{ARTIFACTS}/{urllib.parse.quote(path)}") as response:
            while chunk := response.read(min(CHUNK, size - received + 1)):
                received += len(chunk)
                if received > size:
                    raise TrackingApiError(f"{self.uri}: artifact {path} is longer than the {size} bytes its listing says")
                into.write(chunk)
        if received != size:
            raise TrackingApiError(f"{self.uri}: artifact {path} ended after {received} of the {size} bytes its listing says")

    def run(self, run_id: str) -> dict:
        return self.call("GET", "runs/get", params={"run_id": run_id})["run"]["info"]

    def run_url(self, info: dict) -> str:
        return f"{self.uri}/#/experiments/{info['experiment_id']}/runs/{info['run_id']}"

    def _json(self, method: str, path: str, params: dict | None = None, json_body: dict | None = None) -> dict:
        with self._open(method, path, params, json_body) as response:
            body = response.read(MAX_JSON_BYTES + 1)
        if len(body) > MAX_JSON_BYTES:
            raise TrackingApiError(f"{self.uri}: {path} answered more than {MAX_JSON_BYTES} bytes of JSON")
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise TrackingApiError(f"{self.uri}: {path} answered something that is not a JSON object: {body[:200]!r}")
        return answer

    @property
    def who(self) -> str:
        return f"user {self.auth[0]}" if self.auth else "a request without credentials"

    def _open(self, method: str, path: str, params: dict | None = None, json_body: dict | None = None):
        url = self.uri + path + ("?" + urllib.parse.urlencode(params) if params else "")
        request = urllib.request.Request(url, method=method, data=json.dumps(json_body).encode() if json_body is not None else None)
        if json_body is not None:
            request.add_header("Content-Type", "application/json")
        if self.auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(":".join(self.auth).encode()).decode())
        elif self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            return self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            raise self._refusal(error, path) from None
        except (urllib.error.URLError, OSError) as error:
            if isinstance(getattr(error, "reason", error), ssl.SSLCertVerificationError):
                raise TrackingApiError(
                    f"tracking server {self.uri}: its certificate is not trusted here ({error}). For a self-signed one, "
                    "run fab setup-tracking once from this machine (it saves the certificate) or set MLFLOW_TRACKING_SERVER_CERT_PATH"
                ) from None
            raise TrackingApiError(f"tracking server {self.uri} is not reachable ({error}): check MLFLOW_TRACKING_URI or the inventory") from None

    def _refusal(self, error: urllib.error.HTTPError, path: str) -> TrackingApiError:
        text = error.read(4096).decode(errors="replace")
        if error.code in (401, 403):
            return TrackingApiError(f"{self.uri} refused {self.who} (HTTP {error.code}): check ~/.mlflow/credentials, "
                                    "MLFLOW_TRACKING_USERNAME/PASSWORD or pass --credentials FILE "
                                    "(`fab tracking-user --add NAME` makes one)", error.code)
        if 300 <= error.code < 400:
            return TrackingApiError(f"{self.uri}: {path} answered a redirect to {error.headers.get('Location')!r}: "
                                    "set the tracking URI to where it points, if you trust it", error.code)
        try:
            answer = json.loads(text)
            error_code, message = str(answer.get("error_code", "")), str(answer.get("message", ""))
        except (ValueError, AttributeError):
            error_code, message = "", ""
        return TrackingApiError(f"{self.uri}: {path} answered HTTP {error.code}: {text[:300]}", error.code, error_code, message[:300])

    @cached_property
    def _opener(self) -> urllib.request.OpenerDirector:
        handlers = [_NoRedirects()] + ([urllib.request.HTTPSHandler(context=self._tls())] if self.uri.startswith("https:") else [])
        return urllib.request.build_opener(*handlers)

    def _tls(self) -> ssl.SSLContext:
        if self.verify is False:
            return ssl._create_unverified_context()
        context = ssl.create_default_context(cafile=self.verify if isinstance(self.verify, str) else None)
        if client_certificate := os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
            context.load_cert_chain(client_certificate)
        return context
