"""Throwaway Debian 12 servers on this machine: systemd-nspawn containers with real systemd and sshd.

    tb = Testbed(); tb.prepare(); host = tb.start("mlt1"); host.run("systemctl is-system-running")
"""

from .addresses import ADDRESSES
from .hosts import RemoteCommandError, TestHost
from .proc import TestbedError
from .testbed import Testbed, check_requirements

__all__ = ["ADDRESSES", "RemoteCommandError", "TestHost", "Testbed", "TestbedError", "check_requirements"]
