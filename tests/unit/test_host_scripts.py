"""The scripts built from templates/ and the Python programs in templates/python: valid bash and valid Python for
typical and hostile values, every value landing as one word, and the programs doing their job when run here."""

from __future__ import annotations

import ast
import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.credentials import chosen_action
from tasks.inventory import Host, TrackingSettings
from tasks.monitoring.prometheus import check_step
from tasks.ops import postgres
from tasks.ops.health import HttpCheck, gate_script
from tasks.ops.nginx import reload_script
from tasks.ops.systemd import restart_script
from tasks.serving import switch
from tasks.serving.users import users_script
from tasks.templates import PROGRAMS, TEMPLATES, program, render_script
from tasks.tracking import frontdoor, restore_replicas, server
from tasks.tracking.signin_guard import start_jail_script
from tasks.tracking.upgrade import migrate_script, restore_old_server_script
from tasks.tracking.users import create_user_script, remove_user_script, reset_password_script
from tasks.training.run import follow_script
from tests.unit.test_hostile_values import PAYLOADS, run_recorded, tracking_target

# Names credentials.USER_NAME accepts, as odd as it allows: the user scripts get nothing wider (see the test below).
ODD_USER_NAMES = ["alice", "-rf", "a@b.c", "..", "_-.@", "x" * 64]
# Hostile values that bash -n alone would not catch: a quote or a newline breaking out of the word they land in.
BREAKOUTS = ["a'b", 'a"b', "a\nb", "$(touch $PWNED)", "a'b$(touch $PWNED)"]
PYTHON = f'python3() {{ {shlex.quote(sys.executable)} "$@"; }}\n'


def bash_syntax(script: str) -> None:
    checked = subprocess.run(["/bin/bash", "-n"], input=script, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr + script


def shell_scripts() -> dict[str, str]:
    """Every script built from a template by this module's functions, with typical values."""
    target = tracking_target(auth=True)
    checks = [HttpCheck("/health"), HttpCheck("/x", host_header="h:1", expect="ok", needs_file="/etc/x")]
    door = frontdoor.FrontDoor(target.host, target.address, "node-1")
    scripts = {
        "secrets (auth)": server.generate_env_file_script(auth=True),
        "secrets": server.generate_env_file_script(auth=False),
        "admin password": server.reset_admin_password_script(target.env_path),
        "admin password in restore": server.reset_admin_password_script('"$env"'),
        "role password": server.set_role_password_script(),
        "migrate": migrate_script(target.env_path),
        "upgrade rollback": restore_old_server_script("[Unit]\nDescription=x\n", "1bd49d398cd23", 5000),
        "follow": follow_script("mlflow-run-20261129T101010Z-abcdef"),
        "gate": gate_script("mlflow-model@wine", 5001, checks, 30, after_restart=True),
        "restart": restart_script("mlflow-model@wine", 5001),
        "nginx reload": reload_script(),
        "fail2ban jail": start_jail_script(),
        "self-signed": frontdoor.self_signed_script(door),
        "restore": target.backup_files()[server.RESTORE_SCRIPT][0],
        "database functions": postgres.functions(),
        "restore replicas: check": restore_replicas.check_script("/tmp/x y.tar", "s3://bucket/team", accept_missing=False),
        "restore replicas": restore_replicas.restore_script(auth=True),
        "restore replicas: put back": restore_replicas.restore_script(auth=True, safety="/var/backups/mlflow/mlflow-backup-x.tar"),
        "bake answers": render_script("bake-answers.sh.j2", log="/var/log/nginx/mlflow-models.log", offset=4096, model="wine-2",
                                      upstreams=["10.0.0.5:5001", "[fd00::1]:5001", "a'b:5001"]),
        "prometheus check config": check_step("global: {}", "groups: []").script,
        "prometheus reload": render_script("prometheus/reload.sh.j2", port=9090),
        "mtail compile": render_script("prometheus/mtail-compile.sh.j2", program="Y291bnRlciB4Cg=="),
        "backup metric": server.BACKUP_METRIC_SCRIPT,
        "switch follow": switch.follow_script(switch.Transaction("wine", "r1", "", [], [], "history")),
    }
    for name in ODD_USER_NAMES:
        scripts[f"tracking user add {name}"] = create_user_script(target, name, admin=True)
        scripts[f"tracking user reset {name}"] = reset_password_script(target, name)
        scripts[f"tracking user remove {name}"] = remove_user_script(target, name)
        for action in ("add", "reset-password", "remove"):
            scripts[f"model user {action} {name}"] = users_script(action, name)
    return scripts


SCRIPTS = shell_scripts()


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_is_valid_bash(name):
    bash_syntax(SCRIPTS[name])


@pytest.mark.parametrize("path", sorted(PROGRAMS.glob("*.py")), ids=lambda path: path.name)
def test_every_host_program_is_python_that_fits_a_quoted_heredoc(path):
    ast.parse(path.read_text(), str(path))
    assert "PY" not in program(path.name).splitlines()  # the line that would end the heredoc early


def test_every_program_is_shipped_by_a_template_and_every_one_named_exists():
    texts = "".join(path.read_text() for path in TEMPLATES.glob("*.j2"))
    named = {part.split('")')[0] for part in texts.split('program("')[1:]}
    assert named == {path.name for path in PROGRAMS.glob("*.py")}


def test_scripts_end_without_a_newline_of_their_file():
    assert not render_script("nginx-reload.sh.j2", drain_timeout=30).endswith("\n")
    assert reload_script().endswith("done")


@pytest.mark.parametrize("name", ["a b", "a'b", "$(x)", "a\nb", "ü"])
def test_names_the_user_scripts_never_get(name):
    with pytest.raises(Exception):
        chosen_action(name, "", "")


@pytest.mark.parametrize("name", ODD_USER_NAMES)
def test_model_user_script_gives_awk_and_the_users_file_the_name_verbatim(tmp_path, name):
    script = users_script("add", name).replace("/etc/nginx/mlflow-models.users", str(tmp_path / "users"))
    (tmp_path / "users").write_text("")
    answers = ('mktemp() { command_not_found_handle mktemp "$@" >/dev/null; printf "%s\\n" "$SANDBOX/new"; }\n'
               'openssl() { command_not_found_handle openssl "$@"; echo HASH; }\n')
    run = run_recorded(script, tmp_path, answers=answers)
    assert run.result.returncode == 0, run.result.stdout
    assert ["awk", "-F:", "-v", f"user={name}", "$1 == user", str(tmp_path / "users")] in run.commands
    assert (tmp_path / "new").read_text() == f"{name}:HASH\n"
    assert not run.pwned


@pytest.mark.parametrize("name", ODD_USER_NAMES)
def test_tracking_user_script_sends_the_name_as_json(tmp_path, name):
    (tmp_path / "admin.curl").write_text("")
    script = create_user_script(tracking_target(auth=True), name, admin=True).replace(frontdoor.ADMIN_CURL, str(tmp_path / "admin.curl"))
    run = run_recorded(script, tmp_path, answers="grep() { return 1; }\n")
    assert run.result.returncode == 0, run.result.stdout
    patch = next(command for command in run.commands if command[0] == "curl" and "PATCH" in command)
    assert json.loads(patch[patch.index("--data-binary") + 1]) == {"username": name, "is_admin": True}
    assert "@@password-set" in run.result.stdout and not run.pwned


@pytest.mark.parametrize("schema", BREAKOUTS + ["1bd49d398cd23", ""])
def test_upgrade_rollback_compares_the_schema_verbatim(tmp_path, schema):
    """The schema revision read before the upgrade is one word: the same text on the host means unchanged."""
    answers = f"runuser() {{ command_not_found_handle runuser \"$@\"; [ \"$4\" != psql ] || printf '%s\\n' {shlex.quote(schema)}; }}\n"
    run = run_recorded(restore_old_server_script("[Unit]\n", schema, 5000), tmp_path / "same", answers=answers)
    assert "the schema is unchanged" in run.result.stdout and not run.pwned
    run = run_recorded(restore_old_server_script("[Unit]\n", schema + "-before", 5000), tmp_path / "changed", answers=answers)
    assert "the migration changed the schema" in run.result.stdout and not run.pwned


@pytest.mark.parametrize("payload", PAYLOADS)
def test_self_signed_certificate_names_reach_openssl_verbatim(tmp_path, payload):
    host = Host(name=payload, address="10.0.0.5", roles=("tracking",), user="deploy", tracking=TrackingSettings())
    door = frontdoor.FrontDoor(host, "10.0.0.5", "node-1")
    # grep reads openssl's output at once: left unrecorded, its record can't land inside openssl's
    run = run_recorded(frontdoor.self_signed_script(door), tmp_path, answers="grep() { :; }\n")
    request = next(command for command in run.commands if command[:2] == ["openssl", "req"])
    assert request[request.index("-subj") + 1] == f"/CN={payload}"
    assert request[request.index("-addext") + 1] == "subjectAltName=" + ",".join(door.names())
    assert not run.pwned


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_followed_unit_is_one_word(tmp_path, payload):
    answers = "systemctl() { command_not_found_handle systemctl \"$@\"; return 1; }\n"
    run = run_recorded(follow_script(payload), tmp_path, answers=answers)
    assert ["journalctl", "-u", payload, "-o", "cat", "--no-pager", "--show-cursor"] in run.commands
    assert ["systemctl", "is-active", "--quiet", payload] in run.commands and not run.pwned


def secrets_script(tmp_path: Path, name: str, auth: bool) -> tuple[str, Path, Path]:
    """setup-tracking's secrets script with its files in tmp_path under a (hostile) name; python3 runs for real."""
    env_file, admin_curl = tmp_path / f"{name}.env", tmp_path / f"{name}.curl"
    script = render_script("tracking-secrets.sh.j2", env_file=str(env_file), database="mlflow", user="mlflow", auth=auth,
                           admin_curl=str(admin_curl), admin="admin")
    return script, env_file, admin_curl


@pytest.mark.parametrize("payload", BREAKOUTS)
def test_secrets_script_writes_beside_the_exact_paths_and_moves_into_them(tmp_path, payload):
    name = payload.replace("\n", "_")  # a newline can't be in a file name here: the other breakouts can
    script, env_file, admin_curl = secrets_script(tmp_path, name, auth=True)
    run = run_recorded(script, tmp_path, answers=PYTHON)
    assert run.result.returncode == 0, run.result.stdout
    assert ["mv", f"{env_file}.new", str(env_file)] in run.commands and ["mv", f"{admin_curl}.new", str(admin_curl)] in run.commands
    assert ["chown", "root:mlflow", f"{env_file}.new"] in run.commands and not run.pwned


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


@pytest.mark.parametrize("auth", [True, False])
def test_secrets_program_keeps_what_is_there_and_generates_the_rest_0600(tmp_path, auth):
    env_file, admin_curl = tmp_path / "tracking.env", tmp_path / "admin.curl"
    env_file.write_text("MLFLOW_DB_PASSWORD=kept\nOTHER=x=y\nnot a setting\n")
    arguments = [str(env_file), "mlflow_db"] + ([str(admin_curl), "admin"] if auth else [])
    subprocess.run([sys.executable, PROGRAMS / "tracking_secrets.py", *arguments], check=True)
    written = read_env(Path(f"{env_file}.new"))
    assert written["MLFLOW_DB_PASSWORD"] == "kept" and written["OTHER"] == "x=y"
    assert written["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://mlflow:kept@127.0.0.1:5432/mlflow_db"
    assert stat.S_IMODE(os.stat(f"{env_file}.new").st_mode) == 0o600
    assert ("MLFLOW_AUTH_ADMIN_PASSWORD" in written) == auth and ("MLFLOW_FLASK_SERVER_SECRET_KEY" in written) == auth
    if auth:
        assert Path(f"{admin_curl}.new").read_text() == f'user = "admin:{written["MLFLOW_AUTH_ADMIN_PASSWORD"]}"\n'
        assert stat.S_IMODE(os.stat(f"{admin_curl}.new").st_mode) == 0o600
        assert len(written["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == 64
    else:
        assert not Path(f"{admin_curl}.new").exists()


def test_secrets_program_generates_a_password_when_there_is_no_file(tmp_path):
    env_file = tmp_path / "tracking.env"
    subprocess.run([sys.executable, PROGRAMS / "tracking_secrets.py", str(env_file), "mlflow"], check=True)
    written = read_env(Path(f"{env_file}.new"))
    assert len(written["MLFLOW_DB_PASSWORD"]) >= 40 and written["MLFLOW_DB_PASSWORD"] in written["MLFLOW_BACKEND_STORE_URI"]


def fake_mlflow(root: Path) -> Path:
    """Just enough of mlflow's modules for the programs to import; every call is written to root/calls.json."""
    modules = {
        "mlflow/__init__.py": "",
        "mlflow/db/__init__.py": "",
        "mlflow/db/upgrade.py": "from mlflow.recorder import record\ndef callback(url):\n    record('upgrade', url)\n",
        "mlflow/server/__init__.py": "",
        "mlflow/server/auth/__init__.py": "",
        "mlflow/server/auth/config.py": "class C:\n    database_uri = 'sqlite:///auth.db'\ndef read_auth_config():\n    return C()\n",
        "mlflow/server/auth/sqlalchemy_store.py": (
            "from mlflow.recorder import record\nclass SqlAlchemyStore:\n"
            "    def init_db(self, uri): record('init_db', uri)\n"
            "    def has_user(self, name): return name == 'admin'\n"
            "    def update_user(self, name, password): record('update_user', name, password)\n"
        ),
        "mlflow/recorder.py": (
            "import json, os\ndef record(*call):\n    path = os.environ['CALLS']\n"
            "    calls = json.load(open(path)) if os.path.exists(path) else []\n    json.dump(calls + [list(call)], open(path, 'w'))\n"
        ),
    }
    for name, text in modules.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def run_program(tmp_path: Path, name: str, *arguments: str, **environment: str) -> list[list[str]]:
    calls = tmp_path / "calls.json"
    env = {"PYTHONPATH": str(fake_mlflow(tmp_path / "lib")), "CALLS": str(calls), **environment}
    subprocess.run([sys.executable, "-", *arguments], input=program(name), text=True, env=env, check=True, capture_output=True)
    return json.loads(calls.read_text())


@pytest.mark.parametrize("admin, calls", [("admin", 2), ("someone-else", 1)])
def test_admin_password_program_sets_the_secrets_files_password_when_the_admin_exists(tmp_path, admin, calls):
    env_file = tmp_path / "tracking.env"
    env_file.write_text("MLFLOW_DB_PASSWORD=db\nMLFLOW_AUTH_ADMIN_PASSWORD=s3=cret\n")
    recorded = run_program(tmp_path, "tracking_admin_password.py", str(env_file), admin)
    assert recorded[0] == ["init_db", "sqlite:///auth.db"] and len(recorded) == calls
    if calls == 2:
        assert recorded[1] == ["update_user", "admin", "s3=cret"]


def test_migrate_program_takes_the_url_from_the_environment_only(tmp_path):
    url = "postgresql+psycopg2://mlflow:secret@127.0.0.1:5432/mlflow"
    assert run_program(tmp_path, "migrate_schema.py", MLFLOW_BACKEND_STORE_URI=url) == [["upgrade", url]]
    assert "secret" not in migrate_script("/opt/mlflow/envs/tracking-0")


def test_secrets_stay_off_command_lines():
    """Passwords are generated or read on the host: no script names one, and each program gets paths and names only."""
    for name, script in SCRIPTS.items():
        for line in script.splitlines():
            if line.startswith(("python3 - ", "runuser -u mlflow -- env")):
                assert "PASSWORD" not in line and "secret" not in line, (name, line)


def test_the_nginx_reload_waits_for_nginx_workers_only_not_for_its_own_shell():
    """The reload's shell carries the pattern in its own command line: matched, every reload waited out its timeout."""
    (find_workers,) = [line for line in reload_script().splitlines() if line.startswith("old_workers=")]
    script = f'{find_workers}\nfor pid in $old_workers; do [ "$pid" = "$$" ] && echo "the shell itself: $pid"; done; true'
    found = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert found == ""
