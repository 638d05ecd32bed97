"""`fab predict`: one request to a deployed model, and which host and release answered it.

Through the first lb host, as any client calls it (TLS and sign-in as [lb] sets them); with no lb host,
or with --each, on each model host itself (curl to 127.0.0.1 over SSH: no port has to be open).
"""

from __future__ import annotations

import json
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path

from tasks.credentials import MODEL_USER_CREDENTIALS, USER_NAME
from tasks.inventory import Host, Inventory
from tasks.ops.remote import HostError, Remote
from tasks.ops.steps import Step
from tasks.report import HostReport, console, record
from tasks.serving.deploy import SAMPLE
from tasks.serving.history import model_dir
from tasks.tracking.frontdoor import laptop_certificate_path
from tasks.values import address_port

# nginx names the model host that answered (see templates/nginx-mlflow-model.conf.j2)
UPSTREAM_HEADER = "X-MLflow-Upstream"
RELEASE_MARK = "@@release "


class PredictError(ValueError):
    """Bad input or a missing prerequisite, found before any request is sent."""


@dataclass(frozen=True)
class Request:
    body: str  # "" sends the serving release's own sample request
    content_type: str = "application/json"


@dataclass(frozen=True)
class Answer:
    host: str
    release: str
    status: int
    body: str


def read_request(path: str, stdin) -> Request:
    """--input FILE or - (stdin): JSON, or CSV when the file name ends in .csv; none: the model's sample."""
    if not path:
        return Request("")
    try:
        text = stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise PredictError(f"--input {path}: {error.strerror}") from None
    if path.endswith(".csv"):
        return Request(text, "text/csv")
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        raise PredictError(f"--input {path}: not JSON ({error}); a file ending in .csv is sent as text/csv") from None
    return Request(text)


def current_release_script(name: str) -> str:
    current = f"{model_dir(name)}/current"
    return (
        f'link=$(readlink {current})\n'
        f'[ -n "$link" ] || {{ echo "model {name} is not deployed on this host: fab deploy-model --name {name}"; exit 3; }}\n'
        f'printf "{RELEASE_MARK}%s\\n" "${{link##*/}}"'
    )


def sample_script(name: str) -> str:
    sample = f"{model_dir(name)}/current/{SAMPLE}"
    return (
        f"{current_release_script(name)}\n"
        f'[ -s {sample} ] || {{ echo "model {name} has no sample request on this host: give --input FILE"; exit 3; }}\n'
        f"cat {sample}"
    )


def on_host_script(name: str, port: int, request: Request) -> str:
    """Print the serving release, then POST the request (stdin, or the release's sample) to the local port."""
    data = "@-" if request.body else f"@{model_dir(name)}/current/{SAMPLE}"
    prelude = current_release_script(name) if request.body else sample_script(name).rsplit("\n", 1)[0]
    content_type = shlex.quote(f"Content-Type: {request.content_type}")
    return (
        f"{prelude}\n"
        f"curl -sS -w '\\n%{{http_code}}' --max-time 60 -X POST -H {content_type} --data-binary {data} "
        f"http://127.0.0.1:{port}/invocations"
    )


def parse_release(output: str) -> tuple[str, str]:
    """(release, the rest of the output) from a script that printed the release mark first."""
    first, _, rest = output.partition("\n")
    if not first.startswith(RELEASE_MARK):
        raise HostError("predict", output.strip()[-500:] or "no answer")
    return first[len(RELEASE_MARK):], rest


def parse_on_host(host: str, output: str) -> Answer:
    release, rest = parse_release(output)
    body, _, code = rest.rstrip("\n").rpartition("\n")
    if not code.isdigit():
        raise HostError("predict", rest.strip()[-500:] or "curl printed nothing")
    return Answer(host, release, int(code), body)


def on_host(remote: Remote, name: str, request: Request) -> Answer:
    port = remote.host.model(name).port
    result = remote.run_script(on_host_script(name, port, request), step="predict", stdin=request.body or None)
    return parse_on_host(remote.host.name, result.stdout)


def sample_from(remote: Remote, name: str) -> Request:
    result = remote.run_script(sample_script(name), step="sample request")
    if result.exited != 0:
        raise HostError("sample request", result.stdout.strip()[-500:])
    return Request(parse_release(result.stdout)[1])


def credentials_of(user: str) -> tuple[str, str]:
    """user and password from the curl config `fab model-user` wrote; --user, or the only one there is."""
    if user:
        if not USER_NAME.fullmatch(user):
            raise PredictError(f"--user {user!r}: use letters, digits and _ . @ - only, as `fab model-user` does")
        path = Path(MODEL_USER_CREDENTIALS.format(name=user)).expanduser()
    else:
        found = sorted(Path(MODEL_USER_CREDENTIALS.format(name="x")).expanduser().parent.glob("*.curl"))
        if len(found) != 1:
            names = ", ".join(path.stem for path in found) or "none"
            raise PredictError(f"the balancer asks for a user: give --user NAME (found: {names}; `fab model-user --add NAME` makes one)")
        path = found[0]
    try:
        line = path.read_text()
    except OSError as error:
        raise PredictError(f"{path}: {error.strerror}: `fab model-user --add {user or 'NAME'}` writes it") from None
    name, _, password = line.partition('"')[2].rpartition('"')[0].partition(":")
    if not password:
        raise PredictError(f"{path}: no `user = \"NAME:PASSWORD\"` line")
    return name, password


def upstream_host(header: str, hosts: list[Host]) -> Host | None:
    """The model host nginx sent the request to last (after a retry the header lists every try)."""
    address = header.split(",")[-1].strip().rsplit(":", 1)[0]
    for host in hosts:
        if address in (host.address, _resolved(host.address)):
            return host
    return None


def _resolved(address: str) -> str:
    try:
        return socket.gethostbyname(address)
    except OSError:
        return ""


def through_balancer(lb: Host, inventory: Inventory, name: str, request: Request, auth: tuple[str, str] | None) -> tuple[Host | None, int, str]:
    """POST to the balancer as a client would; the model host that answered, the status and the body."""
    import requests

    settings = inventory.lb
    port = inventory.models.get(name, inventory.models[""]).port
    url = f"{'https' if settings.tls else 'http'}://{address_port(lb.address, port)}/invocations"
    learned = laptop_certificate_path(lb.address, port)
    verify = str(learned) if settings.tls and not settings.tls_certificate and learned.exists() else True
    try:
        response = requests.post(url, data=request.body.encode(), headers={"Content-Type": request.content_type},
                                 auth=auth, verify=verify, timeout=60)
    except requests.RequestException as error:
        raise HostError("predict", f"{url}: {error}", unreachable=True) from None
    return upstream_host(response.headers.get(UPSTREAM_HEADER, ""), inventory.with_role("models")), response.status_code, response.text


def via_balancer(config, lb: Host, inventory: Inventory, name: str, request: Request, auth: tuple[str, str] | None) -> Answer:
    """One request through the balancer; the answering host is asked which release it serves."""
    models = inventory.with_role("models")
    if not request.body:
        request = _on_remote(models[0], config, lambda remote: sample_from(remote, name))
    host, status, body = through_balancer(lb, inventory, name, request, auth)
    if host is None:
        return Answer(f"{lb.name} (model host unknown)", "", status, body)
    release = _on_remote(host, config, lambda remote: parse_release(remote.run_script(current_release_script(name), step="release").stdout)[0])
    return Answer(host.name, release, status, body)


def _on_remote(host: Host, config, work):
    remote = Remote(host, config.clone())
    try:
        return work(remote)
    finally:
        remote.close()


def show_answers(reports: list[HostReport], name: str) -> None:
    """One step per answer (a status other than 200 fails the host), then the table of answers."""
    from rich.table import Table

    table = Table("host", "release", "status", "answer", title=f"predict: {name}")
    for report in reports:
        answer = report.details.get("answer")
        if not answer:
            continue
        summary = f"HTTP {answer.status} from release {answer.release or '?'} on {answer.host}"
        step = Step.ok("predict", summary) if answer.status == 200 else Step.failure("predict", f"{summary}: {answer.body.strip()[:500]}")
        record(report, [step])
        table.add_row(answer.host, answer.release or "-", str(answer.status), answer.body.strip()[:2000])
    console.print(table)
