"""Render the files we install from templates/ with jinja2."""

import shlex
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
)
# `{{ value | shell }}`: one shell word, whatever the value holds
_environment.filters["shell"] = shlex.quote


def render(template: str, **values) -> str:
    return _environment.get_template(template).render(**values)
