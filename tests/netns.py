"""Test hosts on a network of their own: one Linux network namespace a host, each joined by a veth
pair to a bridge in the root namespace, with addresses of their own (10.213.N.0/24). The test
process reaches every host through the bridge; nothing is shared between hosts but that network.

Faults are what a network does to a host: its link goes down (``cut``), it cannot reach one peer
(``block``, a drop rule in its namespace: packets vanish, as in a partition, rather than being
refused), or it loses a share of its packets (``lossy``: ``tc netem`` where the kernel has it, with
``delay``; otherwise an nftables rule dropping that share at random). ``close`` removes every
process, namespace and link by name, whatever happened before.

Used by tests/test_hosts.py (marked ``fault``) and bench/hosts.py. Needs root, ``ip`` and ``nft``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

NEEDS = "network namespaces need root and iproute2 and nftables (apt-get install iproute2 nftables)"


def why_not() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return f"not root: {NEEDS}"
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} missing: {NEEDS}"
    probe = f"scaiprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed ({made.stderr.strip()}): {NEEDS}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def has_netem() -> bool:
    """Whether the kernel has the netem queueing discipline (delay and loss); some have none."""
    link = f"scaiq{os.getpid() % 100000}"
    if subprocess.run(["ip", "link", "add", link, "type", "dummy"], capture_output=True).returncode != 0:
        return False
    try:
        netem = ["tc", "qdisc", "add", "dev", link, "root", "netem", "delay", "1ms"]
        return subprocess.run(netem, capture_output=True).returncode == 0
    finally:
        subprocess.run(["ip", "link", "del", link], capture_output=True)


def run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    link: str  # the veth end on the bridge, in the root namespace
    processes: list[subprocess.Popen] = field(default_factory=list)

    def spawn(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        """A process in this host's namespace, leading a process group of its own."""
        with log.open("ab") as output:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, *command], stdout=output, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip
        self.processes.append(process)
        return process

    def nft(self, *rule: str) -> None:
        run("ip", "netns", "exec", self.namespace, "nft", *rule)


class Network:
    """A bridge and its hosts; ``tag`` names everything made, so ``close`` finds it all."""

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or f"scai{os.getpid() % 100000}"
        self.subnet = f"10.213.{os.getpid() % 250}"
        self.bridge = f"{self.tag}br"
        self.hosts: dict[str, Host] = {}
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")

    def add_host(self, name: str) -> Host:
        number = len(self.hosts) + 2
        host = Host(name, f"{self.tag}-{name}", f"{self.subnet}.{number}", f"{self.tag}v{number}")
        run("ip", "netns", "add", host.namespace)
        run("ip", "link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
        run("ip", "link", "set", host.link, "master", self.bridge, "up")
        inside = ("ip", "netns", "exec", host.namespace, "ip")
        run(*inside, "addr", "add", f"{host.address}/24", "dev", "eth0")
        run(*inside, "link", "set", "eth0", "up")
        run(*inside, "link", "set", "lo", "up")
        self.hosts[name] = host
        return host

    # -- faults -----------------------------------------------------------------------------------
    def cut(self, host: Host) -> None:
        """The host's link goes down: nothing in or out, its connections hang."""
        run("ip", "link", "set", host.link, "down")

    def restore(self, host: Host) -> None:
        run("ip", "link", "set", host.link, "up")

    def block(self, host: Host, peer: Host) -> None:
        """``host`` can no longer reach ``peer`` (its packets to it are dropped); others still reach it."""
        host.nft("add", "table", "inet", "scai")
        host.nft("add", "chain", "inet", "scai", "out", "{ type filter hook output priority 0 ; }")
        host.nft("add", "rule", "inet", "scai", "out", "ip", "daddr", peer.address, "drop")

    def unblock(self, host: Host) -> None:
        host.nft("delete", "table", "inet", "scai")

    def lossy(self, host: Host, loss_percent: int, delay_ms: int, netem: bool) -> str:
        """Degrade the host's link both ways; returns what was applied (no netem: loss only)."""
        if netem:
            run("tc", "qdisc", "add", "dev", host.link, "root", "netem", "delay", f"{delay_ms}ms",
                "loss", f"{loss_percent}%")  # fmt: skip
            return f"{delay_ms} ms delay, {loss_percent}% loss (netem)"
        host.nft("add", "table", "inet", "scai")
        for hook, interface in (("input", "iifname"), ("output", "oifname")):
            host.nft("add", "chain", "inet", "scai", hook, f"{{ type filter hook {hook} priority 0 ; }}")
            host.nft("add", "rule", "inet", "scai", hook, "meta", interface, "eth0",
                     "numgen", "random", "mod", "100", "<", str(loss_percent), "drop")  # fmt: skip
        return f"{loss_percent}% loss each way (nftables; this kernel has no netem for delay)"

    def clear(self, host: Host) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", host.link, "root"], capture_output=True)
        subprocess.run(["ip", "netns", "exec", host.namespace, "nft", "delete", "table", "inet", "scai"],
                       capture_output=True)  # fmt: skip

    # -- teardown ---------------------------------------------------------------------------------
    def stop(self, process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        """``sig`` to the process's group, then SIGKILL to what is left after ``timeout``."""
        if process.poll() is None:
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout=timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def close(self) -> None:
        for host in self.hosts.values():
            for process in host.processes:
                self.stop(process, timeout=5)
            # whatever else runs in the namespace (a grandchild that left the group)
            pids = subprocess.run(["ip", "netns", "pids", host.namespace], capture_output=True, text=True).stdout
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "link", "del", host.link], capture_output=True)
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
