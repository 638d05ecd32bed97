"""A model's scoring server as `mlflow models serve --env-manager local` starts it (uvicorn with MLflow's own scoring app),
each answer appended to the model's answer log as one line, `served MODEL STATUS SECONDS ADDRESS:PORT`: mtail turns the
lines into the model host's request metrics. Installed by deploy-model, run by mlflow-model@NAME with the release's
Python, so it keeps to what Python 3.8 reads and imports nothing the model's env might lack.

Usage: python mlflow_fab_answers.py MODEL_DIR NAME LOG   (PORT and WORKERS from the environment)

MLflow before 2.21 serves models with gunicorn and has no ASGI app to wrap: such a release is served by
`mlflow models serve` itself, without an answer log.
"""

import os
import sys
import time

# mlflow.pyfunc.scoring_server._SERVER_MODEL_PATH: where MLflow's scoring app (its app module) loads the model from
MODEL_PATH = "__pyfunc_model_path__"
NAME, LOG = "MLFLOW_FAB_MODEL", "MLFLOW_FAB_ANSWER_LOG"


def address(server):
    """ASGI's (host, port) of the socket that took the request, as nginx writes an address."""
    if not server:
        return "-"
    host, port = server
    return "[%s]:%s" % (host, port) if ":" in host else "%s:%s" % (host, port)


class AnswerLog:
    """ASGI middleware: one line per HTTP answer, written with one write(2) on a file opened O_APPEND, so the workers'
    lines never interleave and logrotate's copytruncate leaves no hole."""

    def __init__(self, app, model, fd):
        self.app, self.model, self.fd = app, model, fd

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, answered = time.monotonic(), []

        async def send_noting_status(message):
            if message["type"] == "http.response.start":
                answered.append(message["status"])
            await send(message)

        status = 499  # as nginx says: the client went away before an answer
        try:
            await self.app(scope, receive, send_noting_status)
        except Exception:
            status = 500  # uvicorn answers 500 for an app that raises
            raise
        finally:
            status = answered[0] if answered else status
            line = "served %s %d %.3f %s\n" % (self.model, status, time.monotonic() - started, address(scope.get("server")))
            os.write(self.fd, line.encode())


def open_log(path):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.fchmod(fd, 0o644)  # mtail reads it as its own user; the unit's umask would leave it 0640
    return fd


def __getattr__(name):
    """`app`, built when uvicorn's worker asks for it. The log is opened first: mtail reads a file it finds from its end,
    and loading the model gives it time to find this one before the first answer."""
    if name != "app":
        raise AttributeError(name)
    fd = open_log(os.environ[LOG])
    from mlflow.pyfunc.scoring_server.app import app as scoring_app  # loads the model

    global app
    app = AnswerLog(scoring_app, os.environ[NAME], fd)
    return app


def has_scoring_app():
    """MLflow's ASGI scoring app is in this env (MLflow 2.21 and later), found without importing MLflow."""
    from importlib.util import find_spec

    spec = find_spec("mlflow")
    return bool(spec and spec.origin) and os.path.exists(os.path.join(os.path.dirname(spec.origin), "pyfunc", "scoring_server", "app.py"))


def main(argv):
    model_dir, name, log = argv
    port, workers = os.environ["PORT"], os.environ["WORKERS"]
    bin_dir = os.path.dirname(sys.executable)
    if not has_scoring_app():
        os.execv(os.path.join(bin_dir, "mlflow"), ["mlflow", "models", "serve", "-m", model_dir, "--env-manager", "local",
                                                   "-h", "0.0.0.0", "-p", port, "--workers", workers])
    os.environ.update({MODEL_PATH: model_dir, NAME: name, LOG: log})
    os.execv(os.path.join(bin_dir, "uvicorn"), ["uvicorn", "--host", "0.0.0.0", "--port", port, "--workers", workers,
                                                "--app-dir", os.path.dirname(os.path.abspath(__file__)), "mlflow_fab_answers:app"])


if __name__ == "__main__":
    main(sys.argv[1:])
