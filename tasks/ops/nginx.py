"""nginx config files: written under the host's nginx lock, validated with `nginx -t` (the old ones back if refused), reloaded gracefully."""

from __future__ import annotations

from tasks.ops.facts import FileState
from tasks.ops.files import unified_diff, write_file_script
from tasks.ops.lock import LOCK_DIR
from tasks.ops.steps import Step
from tasks.templates import render, render_script

DRAIN_TIMEOUT = 30
NGINX_LOCK = f"{LOCK_DIR}/nginx.lock"
LOCK_WAIT = 120


def locked_script(script: str) -> str:
    """Run script holding this host's nginx lock: changes to nginx (two deploys' drains, setup-lb) go one at a time."""
    return (
        f"mkdir -p {LOCK_DIR}\nexec 9>{NGINX_LOCK}\n"
        f"flock -w {LOCK_WAIT} 9 || {{ echo 'another change to nginx on this host held {NGINX_LOCK} for {LOCK_WAIT} s: try again'; exit 1; }}\n"
        f"{script}"
    )


def install_configs_script(files: dict[str, str | None]) -> str:
    """Under the nginx lock: write every file (None removes it), validate with `nginx -t` (every file put back as it
    was if refused), reload gracefully, and wait until the old workers have finished their in-flight requests."""
    writes = {path: write_file_script(path, content, "root", "root", "644") for path, content in files.items() if content is not None}
    return locked_script(render("nginx-install-configs.sh.j2", paths=list(files), writes=writes, reload=reload_script()))


def install_config_script(path: str, content: str) -> str:
    return install_configs_script({path: content})


def reload_script() -> str:
    """Start nginx, or reload it and wait until the old workers are gone: from then on every connection sees the new config."""
    return render_script("nginx-reload.sh.j2", drain_timeout=DRAIN_TIMEOUT)


def reload_step(name: str, why: str) -> Step:
    return Step.change(name, f"{why}: validate with nginx -t, reload", locked_script(f"nginx -t -q\n{reload_script()}"))


def config_step(path: str, content: str, current: FileState, reload_for: str = "") -> Step:
    """reload_for: why nginx must reload even when this config is unchanged (e.g. a new certificate)."""
    name = f"file {path}"
    if current.exists and current.content == content:
        return reload_step(name, reload_for) if reload_for else Step.ok(name, "up to date")
    summary = "create, validate, start nginx" if not current.exists else "update, validate with nginx -t, reload"
    return Step.change(name, summary, install_config_script(path, content), unified_diff(path, current.content, content))
