"""The replicas' upgrade once their new envs are built (tasks/tracking/upgrade_replicas.py roll_out), on fake hosts: the
backup and the migration once, then the replicas switched in order, the first put back in the same balancer reload that
drains every replica still on the old MLflow, and no replica drained before the upgrade put back before its own switch."""

from __future__ import annotations

import base64
import dataclasses
from itertools import combinations
from types import SimpleNamespace

from tasks.fleet import merge_reports
from tasks.inventory import Host, TrackingSettings
from tasks.ops import facts as f
from tasks.ops.nginx import install_config_script
from tasks.tracking import balancer, frontdoor
from tasks.tracking.server import TrackingTarget
from tasks.tracking.service import TrackingService
from tasks.tracking.upgrade_replicas import Prepared, roll_out
from tests.unit.fake_remote import FakeFleet, FakeHost

OLD, NEW = "3.16.1", "3.17.2"
SETTINGS = TrackingSettings(database="host", artifacts="s3://bucket/team", s3_credentials_file="/x", mlflow_version=OLD)
REPLICAS = tuple(Host(name=f"t{index}", address=f"10.0.0.{index + 4}", roles=("tracking",), tracking=SETTINGS) for index in (1, 2, 3))
NAMES = [host.name for host in REPLICAS]
LB = Host(name="lb1", address="10.0.0.20", roles=("lb",))
SERVICE = TrackingService(SETTINGS, REPLICAS, None, (LB,))
OLD_ENV = "/opt/mlflow/envs/tracking-0123456789ab"
OLD_UNIT = f.FileState(True, "root", "root", "644", f"ExecStart={OLD_ENV}/bin/mlflow server")


def prepared(host: Host) -> Prepared:
    new = dataclasses.replace(host, tracking=dataclasses.replace(host.tracking, mlflow_version=NEW))
    return Prepared(TrackingTarget(new, host.address), host.name, OLD_UNIT, OLD)


def balancer_drains(*names: str) -> dict:
    """lb1's fact: its config as setup-tracking wrote it, these replicas down."""
    routed = base64.b64encode(balancer.config(LB, SERVICE, frozenset(names)).encode()).decode()
    return {"facts": {frontdoor.NGINX_FILE: f"root root 644\n{routed}"}}


def upgrade_on_fakes(switching=NAMES, **hosts):
    """roll_out over fake replicas t1..t3 behind lb1 (those in `switching` on the old version); the fleet and each host's
    report."""
    fleet = FakeFleet({name: FakeHost(**values) for name, values in hosts.items()})
    chosen = [host for host in REPLICAS if host.name in switching]
    stages = roll_out(SimpleNamespace(clone=lambda: None), SERVICE, chosen, {host.name: prepared(host) for host in chosen}, "",
                      connect=lambda host, config: fleet(host))
    return fleet, {report.host: report for report in merge_reports(*stages)}


def drained_by(script: str) -> str:
    """Which replicas a command sent to lb1 leaves drained ('-': none), or 'read' for reading its config."""
    for size in range(len(NAMES) + 1):
        for names in combinations(NAMES, size):
            if install_config_script(frontdoor.NGINX_CONFIG, balancer.config(LB, SERVICE, frozenset(names))) in script:
                return ",".join(names) or "-"
    return "read"


def timeline(fleet: FakeFleet) -> list[str]:
    """Every command in the order the hosts got them: a replica's first step of it, or what lb1 then drains."""
    sent = {name: iter(fleet.sent(name)) for name in fleet.hosts}
    return [f"lb1 {drained_by(next(sent[name]).script)}" if name == "lb1" else f"{name} {next(sent[name]).step}" for name, _ in fleet.log]


UNIT_STEP = "file /etc/systemd/system/mlflow-tracking.service"


def test_the_first_replica_comes_back_on_the_new_version_with_every_old_one_drained_in_the_same_reload():
    fleet, reports = upgrade_on_fakes()
    events = timeline(fleet)
    assert events[:11] == [
        "lb1 read", "t1 backup",  # the backup and the migration, once, in one command
        "lb1 t1", f"t1 {UNIT_STEP}", "lb1 t2,t3",  # t1 back on the new version, every old replica out
        "lb1 t2,t3", f"t2 {UNIT_STEP}", "lb1 t3",
        "lb1 t3", f"t3 {UNIT_STEP}", "lb1 -"]
    assert sorted(events[11:]) == ["t1 old python env", "t2 old python env", "t3 old python env"], "once all are back, together"
    assert "upgrade.callback(uri)" in fleet.sent("t1")[0].script and "systemctl daemon-reload" in fleet.sent("t1")[1].script
    assert not any(report.failed for report in reports.values())
    assert "balancer lb1: t1 back behind the balancers, t2, t3 drained" in reports["t1"].notes


def test_a_replica_drained_before_the_upgrade_switches_first_and_is_not_put_back_on_the_old_version():
    fleet, reports = upgrade_on_fakes(lb1=balancer_drains("t3"))
    assert timeline(fleet)[:11] == [
        "lb1 read", "t1 backup",
        "lb1 t3", f"t3 {UNIT_STEP}", "lb1 t1,t2",  # t3 served nothing: its restart drains no one else
        "lb1 t1,t2", f"t1 {UNIT_STEP}", "lb1 t2",
        "lb1 t2", f"t2 {UNIT_STEP}", "lb1 -"]
    assert "drained already, kept drained until their own turn: t3" in reports["t1"].notes


def test_a_drained_replica_that_does_not_switch_stays_drained():
    fleet, _ = upgrade_on_fakes(switching=["t1", "t2"], lb1=balancer_drains("t3"))
    assert [event for event in timeline(fleet) if event.startswith("lb1")] == ["lb1 read", "lb1 t1,t3", "lb1 t2,t3", "lb1 t2,t3", "lb1 t3"]
    assert fleet.sent("t3") == []


def test_a_failed_migration_switches_and_drains_nothing():
    fleet, reports = upgrade_on_fakes(t1={"fail": "upgrade.callback(uri)"})
    assert timeline(fleet) == ["lb1 read", "t1 backup"] and reports["t1"].failed
    assert fleet.sent("t2") == [] and fleet.sent("t3") == []


def test_a_balancer_that_cannot_be_read_stops_the_upgrade_before_the_backup():
    fleet, reports = upgrade_on_fakes(lb1={"unreachable": True})
    assert fleet.steps("t1") == [] and reports["t1"].failed


def test_a_first_replica_failing_its_switch_stays_drained_and_the_old_ones_keep_serving():
    fleet, reports = upgrade_on_fakes(t1={"fail": "systemctl daemon-reload"})
    assert [event for event in timeline(fleet) if event.startswith("lb1")] == ["lb1 read", "lb1 t1"]
    assert reports["t1"].failed and "t1 stays drained from the balancers: fix it and run setup-tracking again" in reports["t1"].notes
    for name in ("t2", "t3"):
        assert "not switched: another replica failed its switch; this one still runs mlflow 3.16.1, in service" in reports[name].notes
        assert fleet.sent(name) == []
    assert "old python env" not in fleet.steps("t1")


def test_a_later_replica_failing_its_switch_stays_drained_with_the_old_ones_not_switched():
    fleet, reports = upgrade_on_fakes(t2={"fail": "systemctl daemon-reload"})
    assert [event for event in timeline(fleet) if event.startswith("lb1")] == ["lb1 read", "lb1 t1", "lb1 t2,t3", "lb1 t2,t3"]
    assert reports["t2"].failed
    assert "not switched: another replica failed its switch; this one still runs mlflow 3.16.1, drained from the balancers" in reports["t3"].notes
    assert fleet.steps("t1")[-1] == "old python env" and "old python env" not in fleet.steps("t2") + fleet.steps("t3")
