"""Render the files we install from templates/ with jinja2."""

import shlex
from functools import cache
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@cache
def _environment():
    import jinja2  # when a task renders, not when `fab -l` lists

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    # `{{ value | shell }}`: one shell word, whatever the value holds
    environment.filters["shell"] = shlex.quote
    return environment


def render(template: str, **values) -> str:
    return _environment().get_template(template).render(**values)
