"""The testbed's fixed network plan: host names, addresses and MACs on one bridge."""

BRIDGE = "mlfbr0"
GATEWAY = "10.88.0.1"
PREFIX_LENGTH = 24
SUBNET = f"10.88.0.0/{PREFIX_LENGTH}"

ADDRESSES = {
    **{f"mlt{i}": f"10.88.0.{10 + i}" for i in range(1, 10)},
    **{f"demo{i}": f"10.88.0.{20 + i}" for i in range(1, 4)},
    **{f"mlt{i}": f"10.88.0.{30 + i}" for i in range(10, 60)},
}


def address_of(name: str) -> str:
    try:
        return ADDRESSES[name]
    except KeyError:
        known = ", ".join(ADDRESSES)
        raise ValueError(f"unknown testbed host {name!r}; known hosts: {known}") from None


def mac_of(address: str) -> str:
    """A fixed, locally administered MAC per address, so a reused IP never meets a stale ARP entry."""
    last_octet = int(address.rsplit(".", 1)[1])
    return f"02:88:00:00:00:{last_octet:02x}"


def hosts_file() -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", ""]
    lines += [f"{address}\t{name}" for name, address in ADDRESSES.items()]
    return "\n".join(lines) + "\n"
