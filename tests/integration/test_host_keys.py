"""known_hosts as OpenSSH users keep it, against a real sshd (mlt17): @revoked, hashed and @cert-authority lines.

Each test writes its own known_hosts beside its own hosts.toml and runs `fab status`, which needs nothing installed.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.fabrun import fab, host_entry, write_inventory

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def host(module_hosts):
    (host,) = module_hosts("mlt17")
    return host


def status(host, tmp_path, known_hosts: str, accept_new: bool) -> subprocess.CompletedProcess:
    (tmp_path / "known_hosts").write_text(known_hosts)
    inventory = write_inventory(tmp_path / "hosts.toml", {"mlt17": host_entry(host)}, accept_new_host_keys=accept_new)
    return fab(inventory, "status")


def host_key(host) -> str:
    """`type base64` of the key paramiko is offered first (it prefers ed25519)."""
    return " ".join(host.run("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2])


def new_key(tmp_path, name: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
    return " ".join((tmp_path / f"{name}.pub").read_text().split()[:2])


def test_a_revoked_key_is_refused_even_when_a_plain_line_lists_it(host, tmp_path):
    key = host_key(host)
    result = status(host, tmp_path, f"{host.address} {key}\n@revoked * {key}\n", accept_new=True)
    assert result.returncode == 1, result.stdout
    assert f"the host key of {host.user}@{host.address}:22 (ssh-ed25519 SHA256:" in result.stdout
    assert "is marked @revoked in" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_a_hashed_entry_of_the_real_key_is_known(host, tmp_path):
    (tmp_path / "known_hosts").write_text(f"{host.address} {host_key(host)}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(tmp_path / "known_hosts")], check=True, capture_output=True)
    hashed = (tmp_path / "known_hosts").read_text()
    assert hashed.startswith("|1|") and host.address not in hashed
    result = status(host, tmp_path, hashed, accept_new=False)
    assert result.returncode == 0, result.stdout
    assert (tmp_path / "known_hosts").read_text() == hashed


def test_a_host_known_only_through_a_certificate_authority_is_refused_saying_what_to_do(host, tmp_path):
    result = status(host, tmp_path, f"@cert-authority 10.88.0.* {new_key(tmp_path, 'ca')}\n", accept_new=True)
    assert result.returncode == 1, result.stdout
    assert "only through a @cert-authority line" in result.stdout and f"ssh-keyscan {host.address}" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_accept_new_appends_and_keeps_lines_paramiko_cannot_use(host, tmp_path):
    original = (
        "# kept as it is\n"
        f"@cert-authority *.example.org {new_key(tmp_path, 'ca')}\n"
        f"@revoked * {new_key(tmp_path, 'old')}\n"
        f"|1|F1E1KeoE/eEWhi10WpGv4OdiO6Y=|3988QV0VE8wmZL7suNrYQLITLCg= {new_key(tmp_path, 'other')}\n"
        "10.88.0.250 sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIA==\n"
    )
    result = status(host, tmp_path, original, accept_new=True)
    assert result.returncode == 0, result.stdout
    assert (tmp_path / "known_hosts").read_text() == original + f"{host.address} {host_key(host)}\n"
