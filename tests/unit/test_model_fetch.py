"""deploy-model's model fetch over the tracking server's REST API, against a fake server on 127.0.0.1.

The fake answers the endpoints MLflow 3's server has (runs/get, logged-models/search, logged-models/ID, the registry's
alias and download URI, the proxied artifact listing and download), and can be made hostile.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tasks.serving.source import ModelError, fetch

ROOT = Path(__file__).resolve().parents[2]
RUN = "a" * 32
MODEL_FILES = {
    "MLmodel": f"run_id: {RUN}\nflavors: {{}}\n",
    "requirements.txt": "mlflow==3.17.2\nscikit-learn==1.9.1",
    "python_env.yaml": "python: 3.11.7\n",
    "serving_input_example.json": '{"inputs": [[1, 2]]}',
    "extra/weights.bin": "0123456789",
}
MODEL_ROOT = "1/models/m-abc/artifacts"


class FakeTracking:
    """A tracking server: `files` maps artifact paths to bytes; `listing` overrides a directory's listing."""

    def __init__(self):
        self.files = {f"{MODEL_ROOT}/{name}": body.encode() for name, body in MODEL_FILES.items()}
        self.listing: dict[str, list] = {}
        self.oversized: dict[str, bytes] = {}
        self.credentials: tuple[str, str] | None = None
        self.redirect_to = ""
        self.requests: list[str] = []
        self.logged_models = [{"info": {"model_id": "m-other", "source_run_id": "b" * 32, "artifact_uri": "mlflow-artifacts:/1/models/m-other/artifacts"}},
                              {"info": {"model_id": "m-abc", "source_run_id": RUN, "artifact_uri": f"mlflow-artifacts:/{MODEL_ROOT}"}}]
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.uri = f"http://127.0.0.1:{self.server.server_port}"

    def list_directory(self, path: str) -> list:
        if path in self.listing:
            return self.listing[path]
        below = {name.removeprefix(path + "/") for name in self.files if name.startswith(path + "/")}
        entries = {}
        for name in below:
            first, _, rest = name.partition("/")
            entries[first] = {"path": first, "is_dir": True} if rest else {"path": first, "is_dir": False,
                                                                          "file_size": str(len(self.files[f"{path}/{first}"]))}
        return sorted(entries.values(), key=lambda entry: entry["path"])

    def answer(self, method: str, path: str, query: dict, body: dict) -> tuple[int, object]:
        if path == "/api/2.0/mlflow/runs/get":
            if query["run_id"] != RUN and self.credentials:  # MLflow's basic-auth checks permissions before existence
                return 403, {"error_code": "PERMISSION_DENIED", "message": "Permission denied"}
            if query["run_id"] != RUN:
                return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Run '{query['run_id']}' not found"}
            return 200, {"run": {"info": {"run_id": RUN, "experiment_id": "1", "artifact_uri": f"mlflow-artifacts:/1/{RUN}/artifacts"}}}
        if path == "/api/2.0/mlflow/logged-models/search" and method == "POST":
            assert body["experiment_ids"] == ["1"]
            name = body["filter"].split("'")[1]
            return 200, {"models": [model for model in self.logged_models if name == "model"]}
        if path.startswith("/api/2.0/mlflow/logged-models/"):
            model_id = path.rsplit("/", 1)[1]
            found = [model for model in self.logged_models if model["info"]["model_id"] == model_id]
            return (200, {"model": found[0]}) if found else (404, {"error_code": "RESOURCE_DOES_NOT_EXIST"})
        if path == "/api/2.0/mlflow/registered-models/alias":
            if (query["name"], query["alias"]) != ("wine", "champion"):
                return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST"}
            return 200, {"model_version": {"name": "wine", "version": "3"}}
        if path == "/api/2.0/mlflow/model-versions/get-download-uri":
            return 200, {"artifact_uri": "models:/m-abc"} if (query["name"], query["version"]) == ("wine", "3") else {"artifact_uri": ""}
        if path == "/api/2.0/mlflow-artifacts/artifacts":
            return 200, {"files": self.list_directory(query["path"])}
        if path.startswith("/api/2.0/mlflow-artifacts/artifacts/"):
            name = path.removeprefix("/api/2.0/mlflow-artifacts/artifacts/")
            if name in self.oversized:
                return 200, self.oversized[name]
            return (200, self.files[name]) if name in self.files else (404, {"error_code": "RESOURCE_DOES_NOT_EXIST"})
        return 404, {"error_code": "ENDPOINT_NOT_FOUND"}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.respond("GET")

            def do_POST(self):
                self.respond("POST")

            def respond(self, method):
                url = urllib.parse.urlsplit(self.path)
                fake.requests.append(f"{method} {url.path}")
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else {}
                if fake.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", fake.redirect_to + self.path)
                    self.end_headers()
                    return
                if fake.credentials:
                    expected = "Basic " + base64.b64encode(":".join(fake.credentials).encode()).decode()
                    if self.headers.get("Authorization") != expected:
                        self.send_response(401)
                        self.end_headers()
                        return
                status, answer = fake.answer(method, urllib.parse.unquote(url.path), dict(urllib.parse.parse_qsl(url.query)), body)
                payload = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


@pytest.fixture
def server(monkeypatch, tmp_path):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    fake = FakeTracking()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def downloaded(artifact) -> dict[str, str]:
    return {str(path.relative_to(artifact.local_dir)): path.read_text() for path in artifact.local_dir.rglob("*") if path.is_file()}


def test_a_run_id_resolves_to_its_logged_model_and_downloads_it(server):
    artifact = fetch(f"runs:/{RUN}/model", server.uri)
    assert downloaded(artifact) == MODEL_FILES
    assert artifact.run_id == RUN and artifact.requirements == ["mlflow==3.17.2", "scikit-learn==1.9.1"]
    assert artifact.sample == MODEL_FILES["serving_input_example.json"]
    assert oct(artifact.local_dir.stat().st_mode & 0o777) == "0o700"


def test_registry_uris_resolve_through_the_registry(server):
    by_alias = fetch("models:/wine@champion", server.uri)
    assert downloaded(by_alias) == MODEL_FILES and by_alias.run_id == RUN
    assert downloaded(fetch("models:/wine/3", server.uri)) == MODEL_FILES
    assert downloaded(fetch("models:/m-abc", server.uri)) == MODEL_FILES
    with pytest.raises(ModelError, match="models:/wine@nobody not found on"):
        fetch("models:/wine@nobody", server.uri)


def test_an_unknown_run_is_named(server, monkeypatch):
    with pytest.raises(ModelError, match=f"run {'0' * 32} not found on {server.uri}"):
        fetch(f"runs:/{'0' * 32}/model", server.uri)
    server.credentials = ("alice", "right")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "right")
    with pytest.raises(ModelError, match=rf"run {'0' * 32} not found on {server.uri} \(or user alice may not read it: HTTP 403\)"):
        fetch(f"runs:/{'0' * 32}/model", server.uri)


def test_a_run_without_a_model_is_refused(server):
    server.logged_models = []
    with pytest.raises(ModelError, match="has no files on .*does the run log a model"):
        fetch(f"runs:/{RUN}/model", server.uri)


def test_an_unreachable_server_is_named(server):
    uri = server.uri
    server.server.shutdown()
    server.server.server_close()
    with pytest.raises(ModelError, match=f"tracking server {uri} is not reachable"):
        fetch(f"runs:/{RUN}/model", uri)


def test_credentials_come_from_the_environment_over_the_credentials_file(server, monkeypatch, tmp_path):
    server.credentials = ("alice", "right")
    (tmp_path / "home" / ".mlflow").mkdir(parents=True)
    (tmp_path / "home" / ".mlflow" / "credentials").write_text("[mlflow]\nmlflow_tracking_username = alice\nmlflow_tracking_password = right\n")
    assert fetch(f"runs:/{RUN}/model", server.uri).run_id == RUN
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(ModelError, match=r"refused our credentials \(401\).*MLFLOW_TRACKING_USERNAME"):
        fetch(f"runs:/{RUN}/model", server.uri)


def test_a_redirect_is_not_followed_with_our_credentials(server, monkeypatch):
    elsewhere = FakeTracking()
    try:
        server.redirect_to = elsewhere.uri
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
        with pytest.raises(ModelError, match="answered a redirect"):
            fetch(f"runs:/{RUN}/model", server.uri)
        assert elsewhere.requests == []
    finally:
        elsewhere.server.shutdown()
        elsewhere.server.server_close()


@pytest.mark.parametrize("name", ["..", ".", "", "../escaped", "/etc/escaped", "a/../../escaped", "..\\escaped", "bad\nname", None, 7])
def test_a_listed_name_that_could_leave_the_target_is_refused(server, tmp_path, name):
    server.listing[MODEL_ROOT] = [{"path": "MLmodel", "is_dir": False, "file_size": "10"},
                                  {"path": name, "is_dir": False, "file_size": "3"}]
    with pytest.raises(ModelError, match="unsafe artifact name"):
        fetch(f"runs:/{RUN}/model", server.uri)
    assert sorted(path.name for path in tmp_path.rglob("*") if path.is_file()) == []


def test_a_directory_listed_as_dotdot_is_refused(server, tmp_path):
    server.listing[MODEL_ROOT] = [{"path": "..", "is_dir": True}]
    with pytest.raises(ModelError, match="unsafe artifact name"):
        fetch(f"runs:/{RUN}/model", server.uri)
    assert server.requests.count("GET /api/2.0/mlflow-artifacts/artifacts") == 1


def test_a_name_listed_twice_is_refused(server):
    entry = {"path": "MLmodel", "is_dir": False, "file_size": "10"}
    server.listing[MODEL_ROOT] = [entry, entry]
    with pytest.raises(ModelError, match="twice"):
        fetch(f"runs:/{RUN}/model", server.uri)


def test_a_file_longer_or_shorter_than_listed_is_refused(server, tmp_path):
    server.oversized[f"{MODEL_ROOT}/MLmodel"] = b"x" * 10_000_000
    with pytest.raises(ModelError, match="longer than the"):
        fetch(f"runs:/{RUN}/model", server.uri)
    server.oversized[f"{MODEL_ROOT}/MLmodel"] = b"short"
    with pytest.raises(ModelError, match="ended after 5 of the"):
        fetch(f"runs:/{RUN}/model", server.uri)


def test_sizes_are_bounded_before_anything_is_downloaded(server):
    server.listing[MODEL_ROOT] = [{"path": f"f{n}", "is_dir": False, "file_size": str(2**40)} for n in range(100)]
    with pytest.raises(ModelError, match="more than 64 GiB: refused"):
        fetch(f"runs:/{RUN}/model", server.uri)
    assert not any("/api/2.0/mlflow-artifacts/artifacts/" in request for request in server.requests)
    server.listing[MODEL_ROOT] = [{"path": f"d{n}", "is_dir": True} for n in range(10_001)]
    with pytest.raises(ModelError, match="more than 10000 files and directories"):
        fetch(f"runs:/{RUN}/model", server.uri)
    server.listing[MODEL_ROOT] = [{"path": "MLmodel", "is_dir": False, "file_size": "-1"}]
    with pytest.raises(ModelError, match="without a valid size"):
        fetch(f"runs:/{RUN}/model", server.uri)


def test_fetching_over_http_does_not_import_mlflow_and_leaves_nothing_behind(server, tmp_path):
    script = (f"import sys; from tasks.serving.source import fetch; a = fetch('runs:/{RUN}/model', {server.uri!r}); "
              "print(a.run_id, 'mlflow' in sys.modules, a.local_dir.is_dir())")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == [RUN, "False", "True"], result.stderr
    assert list((tmp_path / "tmp").iterdir()) == []  # the download lives as long as the process


def test_endless_nesting_is_refused(server):
    server.list_directory = lambda path: [{"path": "d", "is_dir": True}]
    with pytest.raises(ModelError, match="more than 20 directories deep"):
        fetch(f"runs:/{RUN}/model", server.uri)
    assert server.requests.count("GET /api/2.0/mlflow-artifacts/artifacts") == 21


def self_signed(directory: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_trusts_the_certificate_mlflow_is_told_to_trust(server, monkeypatch, tmp_path):
    import ssl

    cert_path, key_path = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    server.server.socket = context.wrap_socket(server.server.socket, server_side=True)
    uri = server.uri.replace("http:", "https:")
    with pytest.raises(ModelError, match="certificate is not trusted here.*MLFLOW_TRACKING_SERVER_CERT_PATH"):
        fetch(f"runs:/{RUN}/model", uri)
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert_path))
    assert downloaded(fetch(f"runs:/{RUN}/model", uri)) == MODEL_FILES
