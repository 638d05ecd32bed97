"""Debian packages and system users."""

from __future__ import annotations

import shlex

from tasks.ops.steps import Step

APT_ENV = "DEBIAN_FRONTEND=noninteractive"


def ensure_packages(wanted: list[str], installed: set[str], name: str = "packages") -> Step:
    missing = [package for package in wanted if package not in installed]
    if not missing:
        return Step.ok(name, "installed: " + " ".join(wanted))
    names = " ".join(shlex.quote(package) for package in missing)
    install = f"{APT_ENV} apt-get install -y -q --no-install-recommends {names}"
    # Package lists may be missing or stale on a fresh server: refresh once, only when install fails.
    script = f"{install} || {{ apt-get update -q && {install}; }}"
    return Step.change(name, "install " + " ".join(missing), script)


def ensure_system_user(name: str, home: str, exists: bool) -> Step:
    step = f"system user {name}"
    if exists:
        return Step.ok(step, "exists")
    script = f"useradd --system --user-group --home-dir {shlex.quote(home)} --no-create-home --shell /usr/sbin/nologin {name}"
    return Step.change(step, f"create (home {home})", script)
