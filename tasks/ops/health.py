"""HTTP health checks: a one-shot probe for facts, and a gate that waits with a deadline."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from tasks.templates import render_script

JOURNAL_LINES = 50
# what a check prints instead of a status code when the file it needs is not on the host
SKIPPED = "skipped"


@dataclass(frozen=True)
class HttpCheck:
    """One request that must answer 200: a path on the local port, optionally with a Host header."""

    path: str
    host_header: str = ""
    # extra curl arguments, e.g. a POST body
    curl_args: str = ""
    # text the body must contain, e.g. "predictions"
    expect: str = ""
    # where to send it instead of http://127.0.0.1:PORT, e.g. the TLS front door
    base: str = ""
    # a file on the host the request needs (a model's sample request): without it the check is skipped, not failed
    needs_file: str = ""

    def curl(self, port: int, max_time: int = 5) -> str:
        """A command printing the status code, or `unexpected-body` when 200 lacks the expected text."""
        header = f"-H {shlex.quote('Host: ' + self.host_header)} " if self.host_header else ""
        url = shlex.quote(f"{self.base or f'http://127.0.0.1:{port}'}{self.path}")
        output = '"$body"' if self.expect else "/dev/null"
        command = f"curl -s -o {output} -w '%{{http_code}}' --max-time {max_time} {header}{self.curl_args} {url}"
        if self.expect:
            command = f'c=$({command}); [ "$c" != 200 ] || grep -q {shlex.quote(self.expect)} "$body" || c=unexpected-body; echo "$c"'
        if self.needs_file:
            command = f"if [ -e {shlex.quote(self.needs_file)} ]; then {command}; else echo {SKIPPED}; fi"
        return command

    @property
    def label(self) -> str:
        return self.base + self.path + (f" (Host: {self.host_header})" if self.host_header else "")


def probe_command(port: int, checks: list[HttpCheck]) -> str:
    """Print `label code` per check; used as a fact, so it must be quick and read-only."""
    lines = [f"printf '%s %s\\n' {shlex.quote(check.label)} \"$({check.curl(port, 3)} || true)\"" for check in checks]
    return "command -v curl >/dev/null && {\nbody=$(mktemp)\n" + "\n".join(lines) + '\nrm -f "$body"\n}'


def probe_healthy(text: str, checks: list[HttpCheck]) -> bool:
    codes = [line.rsplit(" ", 1)[-1] for line in text.splitlines() if line.strip()]
    return len(codes) == len(checks) and all(code in ("200", SKIPPED) for code in codes)


def gate_script(unit: str, port: int, checks: list[HttpCheck], timeout: int, after_restart: bool) -> str:
    """Wait until every check answers 200; fail fast when the unit stops or restarts; print the journal on failure."""
    return render_script("health-gate.sh.j2", unit=unit, port=port, checks=checks, timeout=timeout, after_restart=after_restart,
                         skipped=SKIPPED, journal_lines=JOURNAL_LINES)
