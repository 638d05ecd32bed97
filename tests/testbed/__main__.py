"""Command line for the demo sandbox: python -m tests.testbed up|down|status."""

import argparse
import logging
import sys
from concurrent.futures import ThreadPoolExecutor

from . import Testbed, TestbedError


def up(testbed: Testbed, names: list[str]) -> None:
    hosts = [testbed.host(name) for name in names]
    testbed.prepare()
    to_start = [host for host in hosts if not host.is_running()]
    with ThreadPoolExecutor(max_workers=max(1, len(to_start))) as pool:
        list(pool.map(lambda host: testbed.start(host.name), to_start))
    for host in hosts:
        note = "" if host in to_start else " (already running, left as it was)"
        print(f"{host.name} {host.address}{note}")
    print(f"identity {testbed.identity}")
    print(f"log in with: ssh -i {testbed.identity} {hosts[0].user}@{hosts[0].address}")


def down(testbed: Testbed, names: list[str], everything: bool) -> None:
    if everything:
        testbed.teardown()
        print("all hosts stopped, network removed")
        return
    for host in [testbed.host(name) for name in names]:
        host.stop()
        print(f"{host.name} stopped")
    if not testbed.running_hosts():
        testbed.teardown()
        print("no host left running: network removed")


def status(testbed: Testbed) -> None:
    print(f"state dir {testbed.state_dir}")
    print(f"network {'prepared' if testbed.network_prepared() else 'not prepared'}")
    for host in testbed.known_hosts():
        print(f"{host.name} {host.address} {'running' if host.is_running() else 'stopped'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="prepare the testbed and start hosts")
    up_parser.add_argument("names", nargs="+", metavar="NAME")
    down_parser = commands.add_parser("down", help="stop hosts (--all: and remove the network)")
    down_parser.add_argument("names", nargs="*", metavar="NAME")
    down_parser.add_argument("--all", action="store_true", dest="everything")
    commands.add_parser("status", help="show hosts and network")
    args = parser.parse_args(argv)
    if args.command == "down" and not (args.names or args.everything):
        parser.error("down needs host names or --all")

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    testbed = Testbed()
    try:
        if args.command == "up":
            up(testbed, args.names)
        elif args.command == "down":
            down(testbed, args.names, args.everything)
        else:
            status(testbed)
    except (TestbedError, ValueError) as error:
        print(f"testbed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
