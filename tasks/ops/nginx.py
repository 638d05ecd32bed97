"""An nginx config file: written, validated with `nginx -t` (the old one back if refused), reloaded gracefully."""

from __future__ import annotations

from tasks.ops.facts import FileState
from tasks.ops.files import unified_diff, write_file_script
from tasks.ops.steps import Step

DRAIN_TIMEOUT = 30


def install_config_script(path: str, content: str) -> str:
    """Write the config, validate it with `nginx -t` (restoring the old one if invalid), reload gracefully,
    and wait until the workers of the old config have finished their in-flight requests."""
    return f"""[ -f {path} ] && cp -p {path} {path}.previous
{write_file_script(path, content, "root", "root", "644")}
if ! nginx -t -q; then
  echo "nginx -t refused the new config: the previous one is back in place"
  if [ -f {path}.previous ]; then mv {path}.previous {path}; else rm -f {path}; fi
  exit 1
fi
rm -f {path}.previous
{reload_script()}"""


def reload_script() -> str:
    """Start nginx, or reload it and wait until the old workers are gone: from then on every connection sees the new config."""
    return f"""if ! systemctl is-active --quiet nginx; then systemctl enable --now --quiet nginx; exit 0; fi
old_workers=$(pgrep -f 'nginx: worker process' || true)
systemctl reload nginx
deadline=$((SECONDS + {DRAIN_TIMEOUT}))
for pid in $old_workers; do
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then echo "requests still in flight after {DRAIN_TIMEOUT} s: going on"; break 2; fi
    sleep 0.1
  done
done"""


def config_step(path: str, content: str, current: FileState, reload_for: str = "") -> Step:
    """reload_for: why nginx must reload even when this config is unchanged (e.g. a new certificate)."""
    name = f"file {path}"
    if current.exists and current.content == content:
        if reload_for:
            return Step.change(name, f"{reload_for}: validate with nginx -t, reload", f"nginx -t -q\n{reload_script()}")
        return Step.ok(name, "up to date")
    summary = "create, validate, start nginx" if not current.exists else "update, validate with nginx -t, reload"
    return Step.change(name, summary, install_config_script(path, content), unified_diff(path, current.content, content))
