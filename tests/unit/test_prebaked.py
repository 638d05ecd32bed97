"""The testbed's prebaked package layers: which packages a host gets, and when a layer is rebuilt."""

from pathlib import Path

import pytest

from tests.testbed.prebaked import layer_key, packages_for, role_packages


def test_a_hosts_packages_are_its_roles_packages_each_once_in_order():
    packages = packages_for(("tracking", "lb"))
    roles = role_packages()
    assert packages == sorted(set(roles["tracking"] + roles["lb"])) and "postgresql" in packages
    assert packages_for(("lb", "tracking")) == packages


def test_an_unknown_role_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="no prebaked packages for role trackng; known roles: tracking, lb, models, training"):
        packages_for(("trackng",))


def test_a_layer_is_rebuilt_when_its_packages_or_its_base_change():
    base = Path("/state/base-0123456789abcdef")
    key = layer_key(base, ["nginx", "openssl"])
    assert layer_key(base, ["nginx", "openssl"]) == key
    assert layer_key(base, ["nginx"]) != key
    assert layer_key(Path("/state/base-fedcba9876543210"), ["nginx", "openssl"]) != key
