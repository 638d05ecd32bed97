"""An IPv6 inventory address followed by a port is written in brackets: in URLs, Host headers, nginx upstreams and what
reads them back. The test hosts here are IPv4 only, so these renderings are what is checked of IPv6."""

import subprocess

from tasks.inventory import Host, LbSettings, TrackingSettings
from tasks.overview.status import balancer_view
from tasks.secret_files import DatabaseUrl
from tasks.serving import balancer as model_balancer
from tasks.serving.balancer import Server, Upstream
from tasks.tracking import balancer
from tasks.tracking.frontdoor import NGINX_CONFIG
from tasks.tracking.server import TrackingTarget
from tasks.tracking.service import TrackingService
from tasks.values import address_port

SETTINGS = TrackingSettings(database="host", artifacts="s3://bucket/team", s3_credentials_file="/x", tls=False, auth=False)
REPLICAS = (Host(name="t1", address="fd00::5", roles=("tracking",), tracking=SETTINGS),
            Host(name="t2", address="10.0.0.6", roles=("tracking",), tracking=SETTINGS))
LB = Host(name="lb1", address="fd00::20", roles=("lb",))
SERVICE = TrackingService(SETTINGS, REPLICAS, None, (LB,))


def test_an_ipv6_address_gets_brackets_and_others_do_not():
    assert address_port("fd00::5", 5000) == "[fd00::5]:5000"
    assert address_port("10.0.0.5", 5000) == "10.0.0.5:5000"
    assert address_port("prod1.example.com", 443) == "prod1.example.com:443"


def test_a_tracking_balancer_routes_to_an_ipv6_replica_and_reads_its_drain_back():
    config = balancer.config(LB, SERVICE, frozenset({"t1"}))
    assert "server [fd00::5]:5000 max_fails=1 fail_timeout=5s down;" in config
    assert "server 10.0.0.6:5000 max_fails=1 fail_timeout=5s;" in config
    assert balancer.drained_in(config, SERVICE) == frozenset({"t1"})
    assert balancer.upstream_addresses(config) == {"fd00::5", "10.0.0.6"}


def test_a_model_balancer_writes_ipv6_upstreams_in_brackets():
    upstream = Upstream("wine", 5001, (Server("m1", "fd00::7", 5001, down=True), Server("m2", "10.0.0.8", 5001)))
    config = model_balancer.render_config(upstream, LbSettings(tls=False, auth=False))
    assert "server [fd00::7]:5001 max_fails=1 fail_timeout=5s down;" in config
    assert "server 10.0.0.8:5001 max_fails=1 fail_timeout=5s;" in config


def test_a_tracking_server_on_ipv6_is_named_in_brackets_by_its_url_host_header_and_allowed_hosts():
    target = TrackingTarget(REPLICAS[0], "fd00::5")
    assert target.url == "http://[fd00::5]:5000"
    assert {check.host_header for check in target.health_checks} >= {"[fd00::5]:5000"}
    assert "[fd00::5]:5000" in target.allowed_hosts("t1") and "fd00::5:5000" not in target.allowed_hosts("t1")


def test_a_database_url_on_ipv6_puts_the_address_in_brackets():
    url = DatabaseUrl("mlflow", "fd00::9", 5432, "mlflow", "verify-full", "p" * 32).url()
    assert url == "postgresql+psycopg2://mlflow@[fd00::9]:5432/mlflow?sslmode=verify-full"


def test_status_sees_an_ipv6_replica_drained_in_the_balancers_config(tmp_path):
    config = tmp_path / "mlflow-tracking.conf"
    config.write_text(balancer.config(LB, SERVICE, frozenset({"t1"})))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text('#!/bin/sh\nfor a; do last=$a; done\necho "$last" >> "$CURLS"\nprintf 200\n')
    (bin_dir / "curl").chmod(0o755)
    script = balancer_view(SERVICE).command.replace(NGINX_CONFIG, str(config))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CURLS": str(tmp_path / "curls")}
    ran = subprocess.run(["/bin/bash", "-c", script], env=env, capture_output=True, text=True, timeout=10)
    assert ran.stdout.splitlines() == ["t1 drained", "t2 200"], ran.stderr
    assert (tmp_path / "curls").read_text().splitlines() == ["http://10.0.0.6:5000/health"]
