"""Drive tests/integration/loadgen.py on a test host: start it, stop it, read what it counted."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.fabrun import wait_for

SCRIPT = Path(__file__).with_name("loadgen.py")


class LoadGenerator:
    """name: its unit and files on the host, so several can run on one host."""

    def __init__(self, host, url: str, body: str, connections: int = 4, name: str = "loadgen"):
        self.host, self.url, self.body, self.connections, self.name = host, url, body, connections, name

    def start(self) -> None:
        name = self.name
        self.host.run(f"rm -f /root/{name}.stop /root/{name}.json; systemctl reset-failed {name} 2>/dev/null || true")
        self.host.run("cat > /root/loadgen.py", input=SCRIPT.read_text())
        self.host.run(f"cat > /root/{name}-body.json", input=self.body)
        self.host.run(
            f"systemd-run --unit={name} python3 /root/loadgen.py "
            f"{self.url} /root/{name}-body.json /root/{name}.stop /root/{name}.json {self.connections}"
        )

    def stop(self) -> dict:
        self.host.run(f"touch /root/{self.name}.stop")
        wait_for(lambda: self.host.run(f"test -f /root/{self.name}.json", check=False).returncode == 0, 60, "the load generator's result")
        return json.loads(self.host.run(f"cat /root/{self.name}.json").stdout)
