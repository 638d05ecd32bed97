"""Render the files and scripts we install or run from templates/ with jinja2; Python run on a host is shipped as it is."""

import shlex
from functools import cache
from pathlib import Path

from tasks.values import address_port

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
# Python programs a host runs (`python - ARGS <<'PY'`): plain .py files, their values come as arguments.
PROGRAMS = TEMPLATES / "python"


@cache
def _environment():
    import jinja2  # when a task renders, not when `fab -l` lists

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        # compiled templates kept between runs (per user, keyed by each template's checksum): a no-op re-run renders a dozen
        bytecode_cache=jinja2.FileSystemBytecodeCache(),
    )
    # `{{ value | shell }}`: one shell word, whatever the value holds
    environment.filters["shell"] = shlex.quote
    # `{{ address | address_port(port) }}`: ADDRESS:PORT, an IPv6 address in brackets
    environment.filters["address_port"] = address_port
    # `{{ program("NAME.py") }}` between `<<'PY'` and `PY`
    environment.globals["program"] = program
    return environment


def render(template: str, **values) -> str:
    return _environment().get_template(template).render(**values)


def render_script(template: str, **values) -> str:
    """A shell script for a step, or to embed in another script: the template rendered, without its file's last newline."""
    return render(template, **values).removesuffix("\n")


def program(name: str) -> str:
    """A Python program from templates/python, without its last newline: ready for a quoted heredoc."""
    return (PROGRAMS / name).read_text().removesuffix("\n")
