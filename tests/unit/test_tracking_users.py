"""tracking-user's decisions on the laptop: which action, whose credentials file, and a new password never lost."""

import pytest
from invoke.exceptions import Exit

from tasks import credentials
from tasks.inventory import Host, TrackingSettings
from tasks.tracking.server import TrackingTarget
from tasks.tracking.users import (
    check_credentials_file,
    chosen_action,
    create_user_script,
    remove_user_script,
    reset_password_script,
    settle,
)


def target():
    host = Host(name="prod1", address="10.0.0.5", roles=("tracking",), user="deploy", tracking=TrackingSettings())
    return TrackingTarget(host, "10.0.0.5")


@pytest.mark.parametrize("flags, message", [
    (("", "", "", False), "exactly one of"),
    (("alice", "bob", "", False), "exactly one of"),
    (("alice\n", "", "", False), "letters, digits"),
    (("", "alice", "", True), "--admin goes with --add only"),
    (("", "", "admin", False), "can't be removed"),
    (("", "admin", "", False), "can't be reset here"),
])
def test_bad_flags_exit_2_before_any_host(flags, message):
    with pytest.raises(Exit) as error:
        chosen_action(*flags)
    assert error.value.code == 2 and message in error.value.message


def test_each_flag_names_its_action():
    assert chosen_action("alice", "", "", True) == ("add", "alice")
    assert chosen_action("", "alice", "", False) == ("reset-password", "alice")
    assert chosen_action("", "", "alice", False) == ("remove", "alice")


def credentials_file(path, name):
    path.write_text(f"[mlflow]\nmlflow_tracking_username = {name}\nmlflow_tracking_password = old\n")
    return path


def test_only_a_reset_of_the_same_user_replaces_a_credentials_file(tmp_path):
    path = credentials_file(tmp_path / "credentials", "alice")
    check_credentials_file(path, "alice", "reset-password")
    check_credentials_file(tmp_path / "absent", "alice", "add")
    for name, action in (("bob", "reset-password"), ("alice", "add")):
        with pytest.raises(Exit) as error:
            check_credentials_file(path, name, action)
        assert error.value.code == 2 and "holds the credentials of alice" in error.value.message
    (tmp_path / "junk").write_text("not an ini file")
    with pytest.raises(Exit, match="no credentials we can read"):
        check_credentials_file(tmp_path / "junk", "alice", "reset-password")


def test_the_new_password_is_on_disk_0600_before_any_host_gets_it(tmp_path):
    path = tmp_path / "sub" / "credentials"
    pending = credentials.write_pending(path, credentials.mlflow_credentials("alice", "s3cret"))
    assert pending.parent == path.parent and not path.exists()
    assert oct(pending.stat().st_mode & 0o777) == "0o600"
    assert credentials.owner(pending) == "alice" and "s3cret" in pending.read_text()


@pytest.mark.parametrize("outcomes, kept", [
    ({}, False),  # no host reached
    ({"a": "not set", "b": "not set"}, False),
    ({"a": "set", "b": "not set"}, True),  # created on a only: the password works there
    ({"a": "unknown"}, True),  # connection lost mid-call: it may be set
])
def test_the_new_password_is_kept_when_any_host_may_have_taken_it(tmp_path, outcomes, kept, capsys):
    path = credentials_file(tmp_path / "credentials", "alice")
    pending = credentials.write_pending(path, credentials.mlflow_credentials("alice", "new"))
    settle(pending, path, "alice", outcomes, ["a", "b"])
    assert not pending.exists()
    assert ("new" in path.read_text()) == kept and ("old" in path.read_text()) != kept
    output = capsys.readouterr().out
    if kept:
        assert ", not on " in output and f"fab tracking-user --reset-password alice --credentials {path}" in output


def test_passwords_travel_on_stdin_never_in_a_script():
    create, reset = create_user_script(target(), "alice", admin=True), reset_password_script(target(), "alice")
    assert "call POST @- create" in create and "call PATCH @- update-password" in reset
    assert '"password"' not in create + reset
    assert "call DELETE '{\"username\": \"alice\"}' delete" in remove_user_script(target(), "alice")
