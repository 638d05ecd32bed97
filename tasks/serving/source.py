"""Resolve a model on the tracking server and fetch it once to the laptop.

Over HTTP(S) through the tracking server's REST API (tasks.serving.resolve, tasks.serving.download); MLflow's client,
a two-second import, only for a tracking URI that is not a server (sqlite:///, a path) or a store the server doesn't proxy.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from tasks.requirements import RequirementError, parse_requirements_file
from tasks.serving.download import download_files, list_tree
from tasks.serving.resolve import ModelError, proxied_path, resolve
from tasks.tracking.api import TrackingApi, TrackingApiError

SAMPLE_FILE = "serving_input_example.json"


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


def fetch(uri: str, tracking_uri: str) -> ModelArtifact:
    """Download the model once; an unknown run, a run without a model or a bad URI raise ModelError."""
    destination = Path(tempfile.mkdtemp(prefix="mlflow-fab-model-"))
    atexit.register(shutil.rmtree, destination, True)  # the deploy reads the copy until `fab` ends, then it goes
    run_match = re.match(r"runs:/([^/]+)/", uri)
    if "://" not in uri and ":" not in uri.split("/", 1)[0] or uri.startswith("file://"):
        local = _copy_local(uri, destination)
    elif tracking_uri.startswith(("http://", "https://")):
        local = _download_over_rest(uri, tracking_uri, destination)
    else:
        local = _download_with_mlflow(uri, tracking_uri, run_match.group(1) if run_match else "", destination)
    if not (local / "MLmodel").exists():
        raise ModelError(f"{uri} is not an MLflow model (no MLmodel file): does the run log a model under that path?")
    run_id = run_match.group(1) if run_match else _run_id_of(local)
    artifact = ModelArtifact(uri=uri, run_id=run_id, local_dir=local, digest=content_digest(local))
    try:
        artifact.requirements  # options, URLs and paths are refused here, before any host is contacted
    except RequirementError as error:
        raise ModelError(str(error)) from None
    return artifact


def _copy_local(uri: str, destination: Path) -> Path:
    """A model directory on this machine (a path or file:// URI), copied so the deploy reads one snapshot."""
    source = Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path) if uri.startswith("file://") else uri).expanduser()
    if not source.is_dir():
        raise ModelError(f"{uri} is not a model directory on this machine")
    return Path(shutil.copytree(source, destination / source.name, symlinks=False))


def _download_over_rest(uri: str, tracking_uri: str, destination: Path) -> Path:
    """Resolve and download through the tracking server's REST API, as MLflow's client would, without importing it."""
    api = TrackingApi.for_client(tracking_uri)
    try:
        root = proxied_path(resolve(api, uri))
        if root is None:
            return _download_with_mlflow(uri, tracking_uri, "", destination)  # a store the server doesn't proxy
        files = list_tree(api, root)
        if not files:
            raise ModelError(f"{uri} has no files on {tracking_uri}: does the run log a model under that path?")
        local = destination / "model"
        download_files(api, root, files, local)
    except TrackingApiError as error:
        if error.status == 401:
            raise ModelError(
                f"the tracking server {tracking_uri} refused our credentials (401): run `fab tracking-user --add NAME` "
                "or set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            ) from None
        raise ModelError(str(error)) from None
    return local


def _download_with_mlflow(uri: str, tracking_uri: str, run_id: str, destination: Path) -> Path:
    """MLflow's own client, for what the REST API can't reach: a local store (sqlite:///, a path) or an unproxied one."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    import mlflow
    from mlflow.exceptions import MlflowException

    # runs:/ and models:/ resolution goes through the global URIs, whatever tracking_uri= says
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    try:
        if run_id:
            client.get_run(run_id)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination)))
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
