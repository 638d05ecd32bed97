"""Hosts with no route to PyPI: mlt42 runs the tracking server (TLS and sign-in, as by default), mlt43 trains and serves.

Before anything is set up, each host's own network namespace refuses PyPI (TLS to pypi.org and files.pythonhosted.org,
and DNS for them) while Debian's archive stays reachable: every Python env must come from the laptop's wheelhouse.
The laptop's home (its wheelhouse cache, credentials, certificates) is a temporary directory. Tests run in file order.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.integration.fabrun import fab, host_entry, write_inventory

pytestmark = pytest.mark.integration

HOSTS = ("mlt42", "mlt43")
WHEELS = "/var/cache/mlflow-fab/wheels"
PIP_ARGS = "/root/pip-args"
# iptables in the host's own namespace (it can't reach any other host's traffic): TLS whose handshake names PyPI
# and DNS questions for it are refused; the Debian archive, behind the same address here, is not.
REFUSE_PYPI = [
    ["-p", "tcp", "-m", "string", "--string", "pypi.org", "--algo", "bm", "-j", "REJECT", "--reject-with", "tcp-reset"],
    ["-p", "tcp", "-m", "string", "--string", "pythonhosted.org", "--algo", "bm", "-j", "REJECT", "--reject-with", "tcp-reset"],
    ["-p", "udp", "--dport", "53", "-m", "string", "--hex-string", "|04|pypi|03|org", "--algo", "bm", "-j", "REJECT"],
    ["-p", "udp", "--dport", "53", "-m", "string", "--hex-string", "|0c|pythonhosted|03|org", "--algo", "bm", "-j", "REJECT"],
]


def refuse_pypi(name: str) -> None:
    for rule in REFUSE_PYPI:
        subprocess.run(["ip", "netns", "exec", name, "iptables", "-A", "OUTPUT", *rule], check=True)


def watch_pip(host) -> None:
    """Note, every 0.2 s, the arguments of every pip install running on the host (this test's own watcher)."""
    loop = f"while :; do ps -C pip -o args= | grep 'pip install' >> {PIP_ARGS}; sleep 0.2; done"
    host.run(f"nohup setsid sh -c \"{loop}\" >/dev/null 2>&1 </dev/null &")


def wheelhouse_line(output: str, host: str) -> str:
    return next(line for line in output.splitlines() if f" {host} wheelhouse: " in line)


def sent_and_held(line: str) -> tuple[int, int, int]:
    total, sent, held = re.search(r"(\d+) wheels for .*: (\d+) sent .*, (\d+) already here", line).groups()
    return int(total), int(sent), int(held)


class Laptop:
    def __init__(self, hosts, home):
        self.tracking, self.train = hosts
        self.home = home
        self.inventory = home / "hosts.toml"

    def write(self, **tracking):
        entries = {"mlt42": host_entry(self.tracking, ["tracking"]), "mlt43": host_entry(self.train, ["train", "models"])}
        write_inventory(self.inventory, entries, tracking={"workers": 1, **tracking})

    def run(self, *args, timeout: float = 1500):
        return fab(self.inventory, *args, env={"HOME": str(self.home)}, timeout=timeout)


@pytest.fixture(scope="module")
def laptop(module_hosts, tmp_path_factory):
    hosts = module_hosts(*HOSTS)
    for name in HOSTS:
        refuse_pypi(name)
    for host in hosts:
        watch_pip(host)
    t = Laptop(hosts, tmp_path_factory.mktemp("laptop"))
    t.write()
    t.setup = t.run("setup-tracking")
    return t


def test_tracking_sets_up_from_the_wheelhouse_on_a_host_without_pypi(laptop):
    t = laptop
    assert t.setup.returncode == 0, t.setup.stdout[-4000:]
    total, sent, held = sent_and_held(wheelhouse_line(t.setup.stdout, "mlt42"))
    assert total == sent > 50 and held == 0  # a cold host gets the whole set
    host = t.tracking
    # the host has no route to PyPI, but one to Debian's archive
    assert host.run("curl -sS -m 20 https://pypi.org/simple/", check=False).returncode != 0
    assert host.run("curl -sS -m 20 --resolve pypi.org:443:$(getent ahostsv4 deb.debian.org | head -1 | cut -d' ' -f1)"
                    " https://pypi.org/simple/", check=False).returncode != 0
    assert host.run("curl -sS -m 20 -o /dev/null http://deb.debian.org/debian/dists/bookworm/InRelease", check=False).returncode == 0
    # the env was installed from the wheelhouse alone, which holds what the laptop fetched
    assert f"--no-index --find-links {WHEELS}" in host.run(f"cat {PIP_ARGS}").stdout
    assert host.run(f"ls {WHEELS} | grep -c '^mlflow-3.17.2-'").stdout.strip() == "1"
    assert host.run("ls -d /opt/mlflow/envs/tracking-*/lib/python3.11/site-packages/mlflow-3.17.2.dist-info").returncode == 0


def test_a_converged_host_needs_no_wheelhouse(laptop):
    again = laptop.run("setup-tracking")
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]
    assert " wheelhouse: " not in again.stdout


def test_a_project_runs_and_its_model_deploys_without_pypi(laptop):
    t = laptop
    assert t.run("tracking-user", "--add", "trainer").returncode == 0
    done = t.run("run-project", "examples/wine", "-P", "alpha=0.4", "--experiment", "wine")
    assert done.returncode == 0, done.stdout[-5000:]
    total, sent, held = sent_and_held(wheelhouse_line(done.stdout, "mlt43"))
    assert total == sent and held == 0
    run_id = next(line for line in done.stdout.splitlines() if " mlt43 run: " in line).split(" mlt43 run: ", 1)[1].split()[0]

    deploy = t.run("deploy-model", "--run-id", run_id)
    assert deploy.returncode == 0, deploy.stdout[-5000:]
    total, sent, held = sent_and_held(wheelhouse_line(deploy.stdout, "mlt43"))
    assert held > 0 and sent < total  # the project's env brought most of the model's wheels already
    predicted = t.run("predict")
    assert predicted.returncode == 0 and '"predictions"' in predicted.stdout, predicted.stdout[-3000:]
    pip_runs = [line for line in t.train.run(f"cat {PIP_ARGS}").stdout.splitlines() if line.strip()]
    assert pip_runs and all(f"--no-index --find-links {WHEELS}" in line for line in pip_runs)
    assert t.train.run("curl -sS -m 20 https://files.pythonhosted.org/", check=False).returncode != 0


def test_a_source_only_requirement_is_refused_on_the_laptop_or_built_there_when_allowed(laptop):
    t = laptop
    envs_before = t.tracking.run("ls /opt/mlflow/envs").stdout
    t.write(extra_packages=["docopt==0.6.2"])  # published only as an sdist
    refused = t.run("setup-tracking")
    assert refused.returncode == 1
    assert "No matching distribution found for docopt==0.6.2" in refused.stdout and "allow_source_builds = true" in refused.stdout
    assert t.tracking.run("ls /opt/mlflow/envs").stdout == envs_before
    assert t.tracking.run(f"ls {WHEELS} | grep -c docopt", check=False).stdout.strip() == "0"

    t.write(extra_packages=["docopt==0.6.2"], allow_source_builds=True)
    built = t.run("setup-tracking")
    assert built.returncode == 0, built.stdout[-4000:]
    total, sent, held = sent_and_held(wheelhouse_line(built.stdout, "mlt42"))
    assert sent == 1 and held == total - 1  # the pure wheel built on the laptop, nothing else
    assert t.tracking.run(f"ls {WHEELS} | grep -c '^docopt-0.6.2-py2.py3-none-any.whl$'").stdout.strip() == "1"
    assert t.tracking.run("ls -d /opt/mlflow/envs/tracking-*/lib/python3.11/site-packages/docopt.py").returncode == 0
