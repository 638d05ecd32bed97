"""Drive tests/integration/loadgen.py on a test host: start it, stop it, read what it counted."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.fabrun import wait_for

SCRIPT = Path(__file__).with_name("loadgen.py")


class LoadGenerator:
    def __init__(self, host, url: str, body: str, connections: int = 4):
        self.host, self.url, self.body, self.connections = host, url, body, connections

    def start(self) -> None:
        self.host.run("rm -f /root/loadgen.stop /root/loadgen.json; systemctl reset-failed loadgen 2>/dev/null || true")
        self.host.run("cat > /root/loadgen.py", input=SCRIPT.read_text())
        self.host.run("cat > /root/loadgen-body.json", input=self.body)
        self.host.run(
            "systemd-run --unit=loadgen python3 /root/loadgen.py "
            f"{self.url} /root/loadgen-body.json /root/loadgen.stop /root/loadgen.json {self.connections}"
        )

    def stop(self) -> dict:
        self.host.run("touch /root/loadgen.stop")
        wait_for(lambda: self.host.run("test -f /root/loadgen.json", check=False).returncode == 0, 60, "the load generator's result")
        return json.loads(self.host.run("cat /root/loadgen.json").stdout)
