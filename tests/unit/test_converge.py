"""The one converge sequence (gather, platform, plan, show or apply) as setup-tracking, setup-lb and upgrade-tracking
run it through fleet.run_on_hosts, against fake hosts: what each host is sent, and what stops it."""

import dataclasses

from fabric import Config

from tasks import fleet
from tasks.inventory import Host, TrackingSettings
from tasks.serving.balancer import converge_lb
from tasks.tracking import frontdoor, signin_guard
from tasks.tracking.server import UNIT_PATH, TrackingTarget, converge
from tasks.tracking.upgrade import upgrade_on
from tests.unit.fake_remote import FakeFleet, FakeHost, wire_names
from tests.unit.test_concurrent_deploys import INVENTORY
from tests.unit.test_tracking_plan import DEBIAN, converged_facts, file_fact

# the wheelhouse has its own tests (test_wheelhouse.py): these hosts build envs from PyPI
HOST = Host(name="prod1", address="10.0.0.5", roles=("tracking",), user="deploy", tracking=TrackingSettings(tls=False, auth=False), wheelhouse=False)


def run(facts: dict[str, str], work, check: bool = False, host: Host = HOST):
    hosts = FakeFleet({host.name: FakeHost(facts=facts)})
    (report,) = fleet.run_on_hosts(Config(), [host], work, check=check, connect=hosts)
    return hosts, report


def test_check_mode_only_gathers_facts():
    hosts, report = run({"os": DEBIAN}, converge, check=True)
    assert hosts.steps("prod1") == ["gather facts"] and report.changed > 0 and not report.failed


def test_not_debian_stops_after_the_facts():
    hosts, report = run({"os": "fedora||Fedora Linux 41\nsystemd"}, converge)
    assert hosts.steps("prod1") == ["gather facts"]
    assert [(step.name, step.failed) for step in report.steps] == [("platform", True)] and report.failed == 1


def test_a_fresh_host_gets_its_plan_in_one_script_and_the_tracking_uri():
    hosts, report = run({"os": DEBIAN}, converge)
    assert hosts.steps("prod1") == ["gather facts", "packages"] and not report.failed
    assert report.steps[0].name == "platform" and report.changed == sum(step.changed for step in report.steps)
    assert "tracking server: http://10.0.0.5:5000  (export MLFLOW_TRACKING_URI=http://10.0.0.5:5000)" in report.notes


def test_a_converged_host_is_sent_nothing_but_still_named():
    facts = wire_names(converged_facts(TrackingTarget(HOST, HOST.address)))
    # with tls and auth off: no front door and no sign-in guard on the host
    for absent in ("tls", f"file:{frontdoor.NGINX_CONFIG}", f"file:{frontdoor.AUTH_CONFIG}", "signin_guard",
                   f"file:{signin_guard.JAIL_PATH}", f"file:{signin_guard.FILTER_PATH}"):
        del facts[absent]
    hosts, report = run(facts, converge)
    assert hosts.steps("prod1") == ["gather facts"] and report.changed == 0 and not report.failed
    assert any(note.startswith("tracking server: http://10.0.0.5:5000") for note in report.notes)


def test_another_mlflow_version_running_is_refused_before_any_change():
    facts = {"os": DEBIAN, "running_marker": "mlflow==2.0.0"}
    hosts, report = run(facts, converge)
    assert hosts.steps("prod1") == ["gather facts"] and [step.name for step in report.steps] == ["platform", "mlflow version"]
    assert report.failed == 1 and report.notes == []


def test_a_failing_step_stops_the_script_and_no_uri_is_given():
    hosts = FakeFleet({"prod1": FakeHost(facts={"os": DEBIAN}, fail="createdb")})
    (report,) = fleet.run_on_hosts(Config(), [HOST], converge, connect=hosts)
    assert [step.name for step in report.steps if step.failed] == ["database mlflow"] and report.notes == []
    assert all(step.skipped for step in report.steps[report.steps.index(next(s for s in report.steps if s.failed)) + 1:])


def test_setup_lb_writes_the_model_config_and_names_its_url(tmp_path):
    from tasks.inventory import load_inventory

    path = tmp_path / "hosts.toml"
    path.write_text(INVENTORY)
    inventory = load_inventory(path)
    lb = inventory.hosts["lb1"]
    hosts = FakeFleet({"lb1": FakeHost(facts={"os": DEBIAN})})
    (report,) = fleet.run_on_hosts(Config(), [lb], lambda remote, report: converge_lb(remote, report, inventory), connect=hosts)
    assert hosts.steps("lb1") == ["gather facts", "packages"] and report.steps[0].name == "platform"
    assert report.notes == ["model red: http://10.0.0.1:5002/invocations -> 2 hosts", "model wine: http://10.0.0.1:5001/invocations -> 2 hosts"]


def installed_target(version: str = "3.16.0") -> TrackingTarget:
    return TrackingTarget(dataclasses.replace(HOST, tracking=dataclasses.replace(HOST.tracking, mlflow_version=version)), HOST.address)


def installed(version: str = "3.16.0") -> dict[str, str]:
    old = installed_target(version)
    return wire_names(converged_facts(old)) | {"running_marker": f"mlflow=={version}", f"file:{UNIT_PATH}": file_fact(old.unit("prod1")),
                                   "scripts": "a b", "schema": "abc"}


def test_upgrade_refuses_a_host_without_a_tracking_server():
    hosts, report = run({"os": DEBIAN}, lambda remote, report: upgrade_on(remote, report, "3.17.2"))
    assert hosts.steps("prod1") == ["gather facts"] and "run fab setup-tracking first" in report.steps[-1].summary


def test_upgrade_backs_up_first_and_drops_the_copy_after_the_gate():
    hosts, report = run(installed(), lambda remote, report: upgrade_on(remote, report, "3.17.2"))
    assert hosts.steps("prod1") == ["gather facts", "backup", "database copy"] and not report.failed
    assert f"rm -rf {installed_target().env_path}" in hosts.sent("prod1")[-1].script


def test_a_failed_migration_rolls_back_and_a_failed_backup_changes_nothing():
    hosts = FakeFleet({"prod1": FakeHost(facts=installed(), fail="mlflow_before_upgrade")})
    (report,) = fleet.run_on_hosts(Config(), [HOST], lambda remote, report: upgrade_on(remote, report, "3.17.2"), connect=hosts)
    assert hosts.steps("prod1") == ["gather facts", "backup", "roll back"]
    assert [step.name for step in report.steps if step.failed] == ["migrate", "roll back"]
    hosts = FakeFleet({"prod1": FakeHost(facts=installed(), fail="/usr/local/sbin/mlflow-backup")})
    (report,) = fleet.run_on_hosts(Config(), [HOST], lambda remote, report: upgrade_on(remote, report, "3.17.2"), connect=hosts)
    assert hosts.steps("prod1") == ["gather facts", "backup"]
    assert "the server still runs mlflow 3.16.0: nothing else was changed" in report.notes
