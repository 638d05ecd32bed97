"""Metrics a host's own scripts leave for the node exporter's textfile collector (Debian's default directory)."""

from __future__ import annotations

import shlex

TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"


def textfile_script(name: str, metric: str, help_text: str, value: str) -> str:
    """Shell writing METRIC = VALUE (a shell expression) to NAME.prom, atomically, when the collector's directory exists
    (setup-monitoring made it); nothing otherwise. Readable by the exporter whatever the script's umask."""
    path = f"{TEXTFILE_DIR}/{name}.prom"
    lines = f"# HELP {metric} {help_text}\\n# TYPE {metric} gauge\\n{metric} %s\\n"
    return (f"if [ -d {TEXTFILE_DIR} ]; then\n"
            f"  printf {shlex.quote(lines)} \"{value}\" > {path}.$$ && chmod 644 {path}.$$ && mv {path}.$$ {path}\n"
            f"fi")
