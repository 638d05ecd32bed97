"""Pip requirements from a model author or hosts.toml, accepted only as plain PEP 508 requirements.

A line pip would read as an option (`-r FILE`, `--index-url`), a URL, a path or an archive could make
the build read a host's files or fetch code from elsewhere: such lines are refused before any host
is contacted, each named with its line number and text.
"""

from __future__ import annotations

import re

# pip installs a "name" ending like this as a local file, not as a package from the index.
ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tlz", ".tar.lz", ".tar.lzma")
INLINE_COMMENT = re.compile(r"(^|\s+)#.*$")


class RequirementError(Exception):
    """Requirements that are not plain PEP 508 requirements; the message names every refused line."""


def refusal(text: str) -> str:
    """Why pip must not get this requirement ('' when it is a plain name[extras] specifiers; markers)."""
    from packaging.requirements import InvalidRequirement, Requirement  # not at import: `fab -l` lists without it

    if text.startswith("-"):
        return "a pip option"
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        return "not a PEP 508 requirement (name, [extras], version specifiers, ; markers)"
    if requirement.url:
        return "a URL"
    if requirement.name.lower().endswith(ARCHIVE_SUFFIXES):
        return "a file name"
    return ""


def checked(items: list[tuple[str, str]], source: str) -> list[str]:
    """The requirements of (label, text) items; RequirementError naming every refused one."""
    refused = [f"  {label}: {text!r} is {reason}" for label, text in items if (reason := refusal(text))]
    if refused:
        raise RequirementError(
            f"{source}: only plain requirements such as 'pandas==2.2.3' or 'mlflow[auth]>=3; python_version>=\"3.10\"' "
            "are accepted (no options, URLs or paths):\n" + "\n".join(refused)
        )
    return [text for _, text in items]


def parse_requirements_file(content: str, source: str) -> list[str]:
    """The lines of a requirements.txt, blank lines and comments skipped."""
    items = []
    for number, line in enumerate(content.splitlines(), start=1):
        text = INLINE_COMMENT.sub("", line).strip()
        if text:
            items.append((f"line {number}", text))
    return checked(items, source)


def check_packages(packages: list[str], source: str) -> list[str]:
    """A list of requirements from hosts.toml (source names the file and key)."""
    return checked([(f"item {number}", text) for number, text in enumerate(packages, start=1)], source)
