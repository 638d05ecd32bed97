"""The model servers' answer log (templates/mlflow_fab_answers.py), run here on fake ASGI apps: one line per answer in
the format mtail's program reads, whatever the app does."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.templates import TEMPLATES

SCRIPT = TEMPLATES / "mlflow_fab_answers.py"
spec = importlib.util.spec_from_file_location("mlflow_fab_answers", SCRIPT)
answers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(answers)

# the pattern templates/prometheus/mlflow-models.mtail applies to an answer line
SERVED = re.compile(r"^served (?P<model>[A-Za-z0-9][A-Za-z0-9_-]*) (?P<status>\d{3}) (?P<seconds>\d+\.\d+) (?P<address>[^ ]+)$")


def app_answering(status: int):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
    return app


async def raising(scope, receive, send):
    raise ValueError("the model raised")


async def cancelled(scope, receive, send):
    raise asyncio.CancelledError


def call(app, scope):
    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        pass

    asyncio.run(app(scope, receive, send))


def lines(path: Path) -> list[dict]:
    return [SERVED.match(line).groupdict() for line in path.read_text().splitlines()]


def test_each_answer_is_one_line_mtail_reads_with_its_status_seconds_and_address(tmp_path):
    log = tmp_path / "wine.log"
    logged = answers.AnswerLog(app_answering(200), "wine", answers.open_log(str(log)))
    call(logged, {"type": "http", "server": ("10.0.0.5", 5001)})
    call(answers.AnswerLog(app_answering(400), "wine", answers.open_log(str(log))), {"type": "http", "server": ("fd00::7", 5001)})
    assert [(line["model"], line["status"], line["address"]) for line in lines(log)] == [
        ("wine", "200", "10.0.0.5:5001"), ("wine", "400", "[fd00::7]:5001")]
    assert all(float(line["seconds"]) < 5 for line in lines(log))
    assert stat.S_IMODE(log.stat().st_mode) == 0o644, "mtail reads it as its own user"


def test_an_app_that_raises_is_logged_as_the_500_uvicorn_answers_and_a_client_gone_as_499(tmp_path):
    log = tmp_path / "wine.log"
    with pytest.raises(ValueError):
        call(answers.AnswerLog(raising, "wine", answers.open_log(str(log))), {"type": "http", "server": ("10.0.0.5", 5001)})
    with pytest.raises(asyncio.CancelledError):
        call(answers.AnswerLog(cancelled, "wine", answers.open_log(str(log))), {"type": "http", "server": None})
    assert [(line["status"], line["address"]) for line in lines(log)] == [("500", "10.0.0.5:5001"), ("499", "-")]


def test_lifespan_messages_are_passed_through_unlogged(tmp_path):
    log = tmp_path / "wine.log"
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    call(answers.AnswerLog(app, "wine", answers.open_log(str(log))), {"type": "lifespan"})
    assert seen == ["lifespan"] and log.read_text() == ""


def test_it_loads_the_model_where_mlflows_own_scoring_app_looks():
    from mlflow.pyfunc import scoring_server

    assert answers.MODEL_PATH == scoring_server._SERVER_MODEL_PATH
    assert answers.has_scoring_app(), "MLflow 3 has the ASGI scoring app"


def test_an_env_without_mlflows_asgi_scoring_app_is_served_by_mlflow_models_serve(tmp_path):
    """MLflow before 2.21 (gunicorn): the launcher execs `mlflow models serve`, here a stand-in printing its arguments."""
    old = tmp_path / "site" / "mlflow"
    (old / "pyfunc" / "scoring_server").mkdir(parents=True)
    (old / "__init__.py").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "mlflow").write_text('#!/bin/sh\necho "$@"\n')
    (bin_dir / "mlflow").chmod(0o755)
    result = subprocess.run([str(bin_dir / "python"), str(SCRIPT), "/srv/model", "wine", str(tmp_path / "wine.log")],
                            env={"PYTHONPATH": str(old.parent), "PORT": "5001", "WORKERS": "2"}, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["models", "serve", "-m", "/srv/model", "--env-manager", "local", "-h", "0.0.0.0", "-p", "5001", "--workers", "2"]
    assert not (tmp_path / "wine.log").exists()
