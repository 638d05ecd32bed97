"""The balancer's TLS and sign-in, the model hosts' firewall, and model-user: rendering and planning."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tasks.inventory import InventoryError, LbSettings, load_inventory
from tasks.ops import facts as f
from tasks.ops import firewall
from tasks.ops.facts import Facts
from tasks.serving.balancer import (
    CERTIFICATE,
    KEY,
    USERS,
    USERS_STAT,
    BalancerDoor,
    config_path,
    plan_lb,
    render_config,
    upstream,
    upstreams,
)
from tasks.serving.deploy import model_ports
from tasks.serving.firewall import MODEL_WALL
from tasks.serving.firewall import policy as model_firewall
from tasks.serving.users import users_script


def inventory_file(tmp_path: Path, lb: str = "", lb_hosts: int = 1) -> Path:
    hosts = "".join(f'[hosts.lb{i}]\naddress = "10.0.0.{i}"\nroles = ["lb"]\n' for i in range(1, lb_hosts + 1))
    path = tmp_path / "hosts.toml"
    path.write_text(f'[lb]\n{lb}\n{hosts}[hosts.m1]\naddress = "10.0.1.1"\nroles = ["models"]\n')
    return path


def config(tmp_path, lb="", drained=frozenset()):
    inventory = load_inventory(inventory_file(tmp_path, lb))
    return render_config(upstream(inventory, "model", drained), inventory.lb)


def test_the_balancer_terminates_tls_and_asks_for_a_user_by_default(tmp_path):
    text = config(tmp_path)
    assert "listen 5001 ssl;" in text and f"ssl_certificate {CERTIFICATE};" in text and f"ssl_certificate_key {KEY};" in text
    assert "error_page 497 =308 https://" in text
    assert f"auth_basic_user_file {USERS};" in text


def test_a_drain_keeps_tls_and_sign_in(tmp_path):
    text = config(tmp_path, drained=frozenset({"m1"}))
    assert " down;" in text and "listen 5001 ssl;" in text and "auth_basic_user_file" in text


def test_plain_http_only_when_asked(tmp_path):
    text = config(tmp_path, "tls = false\nauth = false")
    assert "listen 5001;" in text and "ssl" not in text and "auth_basic" not in text


def test_lb_certificate_and_key_go_together(tmp_path):
    (tmp_path / "cert.pem").write_text("x")
    with pytest.raises(InventoryError, match=r"\[lb\] tls_certificate and tls_key go together"):
        load_inventory(inventory_file(tmp_path, 'tls_certificate = "cert.pem"'))
    with pytest.raises(InventoryError, match=r"unknown key 'tokens' in \[lb\]"):
        load_inventory(inventory_file(tmp_path, "tokens = true"))


def test_setup_lb_makes_a_certificate_and_an_empty_users_file_before_the_config(tmp_path):
    inventory = load_inventory(inventory_file(tmp_path))
    door = BalancerDoor(inventory.hosts["lb1"], "10.0.0.1", lb=inventory.lb)
    steps = plan_lb(door, upstreams(inventory), Facts({}))
    names = [step.name for step in steps]
    assert names.index("tls certificate") < names.index(f"secrets {USERS}") < names.index("nginx config")
    certificate = steps[names.index("tls certificate")]
    assert f"-keyout {KEY}.new" in certificate.script and "IP:10.0.0.1" in certificate.script
    assert f"install -o root -g www-data -m 640 /dev/null {USERS}" in steps[names.index(f"secrets {USERS}")].script


def test_a_new_certificate_reloads_an_unchanged_config(tmp_path):
    inventory = load_inventory(inventory_file(tmp_path))
    door = BalancerDoor(inventory.hosts["lb1"], "10.0.0.1", lb=inventory.lb)
    content = base64.b64encode(render_config(upstream(inventory, "model"), inventory.lb).encode()).decode()
    facts = Facts({f.file_content(config_path("model")): f"root root 644\n{content}", USERS_STAT: "root www-data 640"})
    step = next(step for step in plan_lb(door, upstreams(inventory), facts) if step.name == "nginx config")
    assert step.changed and "certificate changed" in step.summary and "nginx -t" in step.script


def test_firewall_follows_the_lb_hosts_and_the_setting(tmp_path):
    assert model_firewall(load_inventory(inventory_file(tmp_path, lb_hosts=2))).sources == ("10.0.0.1", "10.0.0.2")
    assert not model_firewall(load_inventory(inventory_file(tmp_path, "firewall = false"))).enabled
    assert not model_firewall(load_inventory(inventory_file(tmp_path, lb_hosts=0))).enabled


def test_firewall_rules_allow_the_balancers_and_loopback_only():
    rules = firewall.render_rules(MODEL_WALL, [5002, 5001], ["10.0.0.2", "10.0.0.1", "fd00::1"])
    assert "table inet mlflow_fab\ndelete table inet mlflow_fab\n" in rules  # atomic replace, no other table touched
    assert 'iif "lo" accept' in rules
    assert "tcp dport { 5001, 5002 } ip saddr { 10.0.0.1, 10.0.0.2 } accept" in rules
    assert "tcp dport { 5001, 5002 } ip6 saddr { fd00::1 } accept" in rules
    assert rules.index("tcp dport { 5001, 5002 } reject with tcp reset") > rules.index("ip6 saddr")
    assert "flush ruleset" not in rules


def test_firewall_steps_on_off_and_unresolved():
    on = firewall.steps(firewall.FirewallPolicy(MODEL_WALL, ("10.0.0.1",)), [5001], Facts({}))
    assert [step.name for step in on] == [f"file {MODEL_WALL.rules}", f"file {MODEL_WALL.unit_path}", "firewall"]
    assert f"systemctl enable --quiet {MODEL_WALL.unit}" in on[-1].script
    off_clean = firewall.steps(firewall.FirewallPolicy(MODEL_WALL), [5001], Facts({}))
    assert not off_clean[0].changed
    off = firewall.steps(firewall.FirewallPolicy(MODEL_WALL), [5001], Facts({MODEL_WALL.table_loaded: "loaded"}))
    assert off[0].changed and "nft delete table inet mlflow_fab" in off[0].script and "flush" not in off[0].script
    unresolved = firewall.steps(firewall.FirewallPolicy(MODEL_WALL, ("lb.example",)), [5001], Facts({firewall.resolved("lb.example"): ""}))
    assert unresolved[0].failed and "lb.example" in unresolved[0].summary
    resolved = firewall.steps(firewall.FirewallPolicy(MODEL_WALL, ("lb.example",)), [5001], Facts({firewall.resolved("lb.example"): "10.0.0.9"}))
    assert "10.0.0.9" in resolved[0].diff


def test_model_user_script_takes_the_password_on_stdin_only():
    script = users_script("add", "alice")
    assert "openssl passwd -6 -stdin" in script and 'chmod 640 "$new"' in script and "exists already" in script
    assert "openssl passwd -6 -stdin" not in users_script("remove", "alice")
    assert "no user alice" in users_script("reset-password", "alice")


def test_lb_settings_default_to_secure():
    assert LbSettings() == LbSettings(tls=True, auth=True, firewall=True)


def test_the_firewall_covers_every_model_port_of_the_host():
    ports = "/etc/mlflow/models/model.env:PORT=5001\n/etc/mlflow/models/wine.env:PORT=5002"
    assert model_ports(5003, ports) == [5001, 5002, 5003]
