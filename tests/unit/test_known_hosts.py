"""known_hosts with the lines OpenSSH writes: markers, hashed names, comments, lines paramiko can't read."""

import threading

import paramiko
import pytest
from fabric import Connection

from tasks.inventory import Host
from tasks.ops.known_hosts import HostKeyRefused, KnownHosts, KnownHostsPolicy, host_matches
from tasks.ops.remote import HostError, check_host_keys

HOST = "10.0.0.5"


@pytest.fixture(scope="module")
def keys():
    return [paramiko.ECDSAKey.generate() for _ in range(3)]


def line(names: str, key: paramiko.PKey) -> str:
    return f"{names} {key.get_name()} {key.get_base64()}"


def policy_for(path, text: str, accept_new: bool = False) -> KnownHostsPolicy:
    path.write_bytes(text.encode())
    return KnownHostsPolicy(KnownHosts.read(path), accept_new, f"deploy@{HOST}:22", str(path))


def trusted(policy: KnownHostsPolicy, hostname: str) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    policy.known.load_into(keys)
    return keys.lookup(hostname)


def test_a_revoked_key_is_refused_even_when_a_plain_line_lists_it(tmp_path, keys):
    text = f"{line(HOST, keys[0])}\n@revoked * {keys[0].get_name()} {keys[0].get_base64()}\n"
    policy = policy_for(tmp_path / "known_hosts", text, accept_new=True)
    assert trusted(policy, HOST) is None
    with pytest.raises(HostKeyRefused, match="marked @revoked in .*known_hosts: refusing to connect"):
        policy.missing_host_key(None, HOST, keys[0])
    assert (tmp_path / "known_hosts").read_text() == text


def test_hashed_names_are_known_on_any_port(tmp_path, keys):
    hashed = paramiko.HostKeys.hash_host(HOST)
    on_port = paramiko.HostKeys.hash_host(f"[{HOST}]:2222")
    policy = policy_for(tmp_path / "known_hosts", f"{line(hashed, keys[0])}\n{line(on_port, keys[1])}\n")
    assert trusted(policy, HOST)[keys[0].get_name()] == keys[0]
    assert trusted(policy, f"[{HOST}]:2222")[keys[1].get_name()] == keys[1]
    assert trusted(policy, "10.0.0.6") is None


def test_a_host_known_only_through_a_certificate_authority_is_refused_saying_so(tmp_path, keys):
    authority = f"@cert-authority *.example.org,[*.example.org]:*,10.0.0.*,!10.0.0.9 {keys[2].get_name()} {keys[2].get_base64()}\n"
    policy = policy_for(tmp_path / "known_hosts", authority, accept_new=True)
    with pytest.raises(HostKeyRefused, match="only through a @cert-authority line.*ssh-keyscan 10.0.0.5"):
        policy.missing_host_key(None, HOST, keys[0])
    with pytest.raises(HostKeyRefused, match="ssh-keyscan -p 2222 db.example.org"):
        policy.missing_host_key(None, "[db.example.org]:2222", keys[0])
    policy.missing_host_key(None, "10.0.0.9", keys[0])  # excluded by the ! pattern: learned like any new host
    assert (tmp_path / "known_hosts").read_text() == authority + line("10.0.0.9", keys[0]) + "\n"


def test_host_patterns_follow_openssh():
    assert host_matches("a.example.org,10.0.0.?", "10.0.0.5")
    assert not host_matches("10.0.0.?", "10.0.0.55")
    assert host_matches("*.EXAMPLE.org", "db.example.org")
    assert not host_matches("*,!db.example.org", "db.example.org")
    assert host_matches(paramiko.HostKeys.hash_host(HOST), HOST)
    assert not host_matches(paramiko.HostKeys.hash_host(HOST), "10.0.0.6")


def test_an_unknown_host_is_refused_without_accept_new(tmp_path, keys):
    policy = policy_for(tmp_path / "known_hosts", "# nothing yet\n")
    with pytest.raises(HostKeyRefused, match=f"deploy@{HOST}:22 is not in .*accept_new_host_keys = true"):
        policy.missing_host_key(None, HOST, keys[0])
    assert (tmp_path / "known_hosts").read_text() == "# nothing yet\n"


def test_accept_new_appends_and_keeps_every_other_byte(tmp_path, keys):
    original = (
        "# our fleet\n\n"
        f"@cert-authority *.example.org {keys[2].get_name()} {keys[2].get_base64()}\n"
        f"@revoked * {keys[1].get_name()} {keys[1].get_base64()}\n"
        f"{line(paramiko.HostKeys.hash_host('10.0.0.7'), keys[1])}\n"
        "10.0.0.8,gw  ssh-ed25519   AAAAC3NzaC1lZDI1NTE5AAAAIA7Yv3s0dPmZ5vGz6p0oYbX8yGkqvGJQ5O7D2kq5aKmj  old laptop\n"
        "10.0.0.8 sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIA==\n"
        "not a key line at all"
    )
    path = tmp_path / "known_hosts"
    policy = policy_for(path, original, accept_new=True)
    policy.missing_host_key(None, f"[{HOST}]:2222", keys[0])
    assert path.read_bytes() == (original + "\n" + line(f"[{HOST}]:2222", keys[0]) + "\n").encode()
    assert KnownHosts.read(path).knows(f"[{HOST}]:2222", keys[0])
    policy.missing_host_key(None, f"[{HOST}]:2222", keys[0])  # learned twice at once: written once
    assert path.read_text().count(keys[0].get_base64()) == 1


def test_hosts_learned_at_once_from_many_threads_all_land(tmp_path, keys):
    path = tmp_path / "known_hosts"
    original = f"@revoked * {keys[1].get_name()} {keys[1].get_base64()}\n"
    names = [f"10.0.1.{index}" for index in range(24)]
    policies = [policy_for(path, original, accept_new=True) for _ in names]
    start = threading.Barrier(len(names))

    def learn(policy, name):
        start.wait()
        policy.missing_host_key(None, name, keys[0])

    threads = [threading.Thread(target=learn, args=pair) for pair in zip(policies, names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    text = path.read_text()
    assert text.startswith(original)
    assert sorted(text.splitlines()[1:]) == sorted(line(name, keys[0]) for name in names)


def test_accept_new_creates_the_file_and_its_directory(tmp_path, keys):
    path = tmp_path / "ssh" / "known_hosts"
    policy = KnownHostsPolicy(KnownHosts.read(path), True, f"deploy@{HOST}:22", str(path))
    policy.missing_host_key(None, HOST, keys[0])
    assert path.read_text() == line(HOST, keys[0]) + "\n"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"


def test_a_known_hosts_that_cannot_be_read_is_a_host_error_not_a_traceback(tmp_path):
    (tmp_path / "known_hosts").mkdir()
    host = Host(name="web", address=HOST, known_hosts=str(tmp_path / "known_hosts"))
    with pytest.raises(HostError, match="cannot read .*known_hosts \\(Is a directory\\)"):
        check_host_keys(Connection(HOST), host, f"deploy@{HOST}:22")
