"""Resolve a model on the tracking server and fetch it once to the laptop.

mlflow is imported only here, inside the functions that need it: `fab -l` must stay fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tasks.requirements import RequirementError, parse_requirements_file

SAMPLE_FILE = "serving_input_example.json"


class ModelError(Exception):
    """The model can't be resolved or fetched; nothing was changed anywhere."""


@dataclass(frozen=True)
class ModelArtifact:
    uri: str
    run_id: str
    local_dir: Path
    digest: str

    def read(self, name: str) -> str:
        path = self.local_dir / name
        return path.read_text() if path.exists() else ""

    @property
    def requirements(self) -> list[str]:
        """The pip requirements, one per line; RequirementError for any line that is not a plain requirement."""
        return parse_requirements_file(self.read("requirements.txt"), f"{self.uri}: requirements.txt")

    @property
    def python_version(self) -> str:
        """major.minor of the training Python, from python_env.yaml ('' when absent)."""
        match = re.search(r"^python:\s*['\"]?(\d+\.\d+)", self.read("python_env.yaml"), re.MULTILINE)
        return match.group(1) if match else ""

    @property
    def sample(self) -> str:
        return self.read(SAMPLE_FILE)


def model_uri(run_id: str | None, uri: str | None) -> str:
    if bool(run_id) == bool(uri):
        raise ModelError("give exactly one of --run-id ID or --model-uri URI")
    return uri or f"runs:/{run_id}/model"


def content_digest(directory: Path) -> str:
    """sha256 over every file's relative path and bytes, in a stable order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def check_reachable(tracking_uri: str, timeout: float = 5) -> None:
    if not tracking_uri.startswith(("http://", "https://")):
        return
    context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context = ssl._create_unverified_context()
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout, context=context) as response:
            response.read()
    except (urllib.error.URLError, OSError) as error:
        if isinstance(getattr(error, "reason", error), ssl.SSLCertVerificationError):
            raise ModelError(
                f"tracking server {tracking_uri}: its certificate is not trusted here ({error}). For a self-signed one, "
                "run fab setup-tracking once from this machine (it saves the certificate) or set MLFLOW_TRACKING_SERVER_CERT_PATH"
            ) from None
        raise ModelError(f"tracking server {tracking_uri} is not reachable ({error}): check MLFLOW_TRACKING_URI or the inventory") from None


def fetch(uri: str, tracking_uri: str) -> ModelArtifact:
    """Download the model once; an unknown run, a run without a model or a bad URI raise ModelError."""
    check_reachable(tracking_uri)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    import mlflow
    from mlflow.exceptions import MlflowException

    # runs:/ and models:/ resolution goes through the global URIs, whatever tracking_uri= says
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    run_id = ""
    run_match = re.match(r"runs:/([^/]+)/", uri)
    try:
        if run_match:
            run_id = run_match.group(1)
            client.get_run(run_id)
        destination = Path(tempfile.mkdtemp(prefix="mlflow-fab-model-"))
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination)))
    except MlflowException as error:
        message = str(error).splitlines()[0]
        if run_id and "RESOURCE_DOES_NOT_EXIST" in str(error.error_code) and "Run" in message:
            raise ModelError(f"run {run_id} not found on {tracking_uri}") from None
        if "401" in message or "Unauthorized" in message:
            raise ModelError(
                f"the tracking server {tracking_uri} refused our credentials (401): run `fab tracking-user --add NAME` "
                "or set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            ) from None
        raise ModelError(f"cannot fetch {uri} from {tracking_uri}: {message}") from None
    if not (local / "MLmodel").exists():
        raise ModelError(f"{uri} is not an MLflow model (no MLmodel file): does the run log a model under that path?")
    if not run_id:
        run_id = _run_id_of(local)
    artifact = ModelArtifact(uri=uri, run_id=run_id, local_dir=local, digest=content_digest(local))
    try:
        artifact.requirements  # options, URLs and paths are refused here, before any host is contacted
    except RequirementError as error:
        raise ModelError(str(error)) from None
    return artifact


def _run_id_of(model_dir: Path) -> str:
    match = re.search(r"^run_id:\s*(\S+)", (model_dir / "MLmodel").read_text(), re.MULTILINE)
    return match.group(1) if match else ""


def manifest(artifact: ModelArtifact, env_hash: str, deployed_at: str, deployed_by: str) -> str:
    return json.dumps(
        {
            "model_uri": artifact.uri,
            "run_id": artifact.run_id,
            "digest": artifact.digest,
            "env_hash": env_hash,
            "deployed_at": deployed_at,
            "deployed_by": deployed_by,
        },
        indent=2,
    ) + "\n"
