"""Where a model URI's files live, asked of the tracking server's REST API the way MLflow's client resolves it.

runs:/ID/PATH: the run's logged model named PATH's first part (MLflow 3 keeps logged models beside the run),
else the run's own artifacts under PATH. models:/m-ID, models:/NAME/VERSION, NAME/latest, NAME/STAGE, NAME@ALIAS:
the logged model or the registry's download URI. The answer is an artifact URI, e.g. mlflow-artifacts:/1/models/m-x/artifacts.
"""

from __future__ import annotations

import re
import urllib.parse

from tasks.tracking.api import TrackingApi, TrackingApiError

# a logged model's name goes into a search filter in quotes
PLAIN_NAME = re.compile(r"[A-Za-z0-9_.@ -]{1,256}")
MAX_INDIRECTIONS = 3
MAX_SEARCH_PAGES = 100


class ModelError(Exception):
    """The model can't be resolved or fetched; nothing was changed anywhere."""


def resolve(api: TrackingApi, uri: str, depth: int = 0) -> str:
    """The artifact URI holding the model's files; ModelError for an unknown run or model or a malformed URI."""
    if depth > MAX_INDIRECTIONS:
        raise ModelError(f"{uri}: the registry's download URIs point at each other more than {MAX_INDIRECTIONS} times")
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme == "runs":
        return _run_location(api, uri)
    if scheme == "models":
        return _registry_location(api, uri, depth)
    return uri


def proxied_path(location: str) -> str | None:
    """The path under the server's artifact root when the server proxies this location (mlflow-artifacts:/PATH), else None."""
    parsed = urllib.parse.urlparse(location)
    return parsed.path.strip("/") if parsed.scheme == "mlflow-artifacts" and not parsed.netloc else None


def _run_location(api: TrackingApi, uri: str) -> str:
    run_id, _, path = uri.removeprefix("runs:/").partition("/")
    path = path.strip("/")
    if not run_id or not path:
        raise ModelError(f"{uri} is not a runs:/ URI: use runs:/RUN_ID/PATH")
    try:
        info = api.run(run_id)
    except TrackingApiError as error:
        if missing(error):
            raise ModelError(f"run {run_id} not found on {api.uri}{hidden(api, error)}") from None
        raise
    name, _, below = path.partition("/")
    if model := _logged_model_of(api, info["experiment_id"], run_id, name):
        return _joined(model["artifact_uri"], below)
    return _joined(info["artifact_uri"], path)


def _logged_model_of(api: TrackingApi, experiment_id: str, run_id: str, name: str) -> dict | None:
    """The first logged model called NAME that the run made, as MLflow's RunsArtifactRepository picks it."""
    if not PLAIN_NAME.fullmatch(name):
        return None
    page_token = ""
    for _ in range(MAX_SEARCH_PAGES):
        body = {"experiment_ids": [experiment_id], "filter": f"name = '{name}'"} | ({"page_token": page_token} if page_token else {})
        page = api.call("POST", "logged-models/search", json_body=body)
        for model in page.get("models", []):
            if model.get("info", {}).get("source_run_id") == run_id:
                return model["info"]
        page_token = page.get("next_page_token", "")
        if not page_token:
            return None
    return None


def _registry_location(api: TrackingApi, uri: str, depth: int) -> str:
    parts = uri.removeprefix("models:").lstrip("/").split("/")
    if len(parts) > 2 or not parts[0].strip() or (len(parts) == 2 and not parts[1].strip()):
        raise ModelError(f"{uri} is not a models:/ URI: use models:/NAME/VERSION, models:/NAME@ALIAS or models:/MODEL_ID")
    try:
        if len(parts) == 1 and "@" not in parts[0]:
            return api.call("GET", f"logged-models/{urllib.parse.quote(parts[0], safe='')}")["model"]["info"]["artifact_uri"]
        if len(parts) == 1:
            name, alias = parts[0].rsplit("@", 1)
            version = api.call("GET", "registered-models/alias", params={"name": name, "alias": alias})["model_version"]["version"]
        else:
            name, version = parts
            if not version.isdigit():
                version = _latest_version(api, name, None if version.lower() == "latest" else version, uri)
        download = api.call("GET", "model-versions/get-download-uri", params={"name": name, "version": version})["artifact_uri"]
    except TrackingApiError as error:
        if missing(error):
            raise ModelError(f"{uri} not found on {api.uri}{hidden(api, error)}") from None
        raise
    return resolve(api, download, depth + 1)


def missing(error: TrackingApiError) -> bool:
    """The server's ways of saying there's no such thing: 404, RESOURCE_DOES_NOT_EXIST, a 400 "... not found"
    (an unknown alias), or with sign-in on a 403, since permissions are checked before existence."""
    return (error.status in (403, 404) or error.error_code == "RESOURCE_DOES_NOT_EXIST"
            or (error.status == 400 and "not found" in error.server_message.lower()))


def hidden(api: TrackingApi, error: TrackingApiError) -> str:
    return f" (or {api.who} may not read it: HTTP 403)" if error.status == 403 else f": {error.server_message}" if error.server_message else ""


def _latest_version(api: TrackingApi, name: str, stage: str | None, uri: str) -> str:
    body = {"name": name} | ({"stages": [stage]} if stage else {})
    versions = api.call("POST", "registered-models/get-latest-versions", json_body=body).get("model_versions", [])
    if not versions:
        raise ModelError(f"{uri}: the registered model {name} has no version" + (f" in stage {stage}" if stage else ""))
    return str(max(int(version["version"]) for version in versions))


def _joined(base: str, path: str) -> str:
    return f"{base.rstrip('/')}/{path}" if path else base
