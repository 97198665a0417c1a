"""A real OpenSSH server on a loopback port, with throwaway host and user keys.

``sshd_server`` (session scope) starts ``/usr/sbin/sshd -D -e`` as root with a
config of its own in a temporary folder: one ed25519 host key, one authorized
user key for root, no PAM, listening on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port, port_open, service_missing

SSHD = "/usr/sbin/sshd"


@dataclass
class SSHServer:
    """Where the test sshd listens and the files a client needs to reach it."""

    host: str
    port: int
    folder: Path
    user_key: Path
    known_hosts: Path
    host_key_line: str
    process: subprocess.Popen[bytes]

    def url(self, path: str = "/", **options: str) -> str:
        """Return an ssh:// URL for this server with the given query options."""
        opts = {"key": str(self.user_key), "known_hosts": str(self.known_hosts), **options}
        query = "&".join(f"{k}={v}" for k, v in opts.items() if v != "")
        return f"ssh://root@{self.host}:{self.port}{path}?{query}"

    def session_pids(self) -> list[int]:
        """Process ids of the per-connection sshd processes (children of the listener)."""
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.process.pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return [int(x) for x in out.split()]


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bp-test", "-f", str(path)],
        check=True,
    )


@pytest.fixture(scope="session")
def sshd_server() -> Iterator[SSHServer]:
    """A running OpenSSH server for the whole test session."""
    if not Path(SSHD).is_file() or shutil.which("ssh-keygen") is None:
        service_missing(
            "sshd", f"{SSHD} or ssh-keygen is not installed (apt-get install openssh-server)"
        )
    if os.geteuid() != 0:
        service_missing("sshd", "the test sshd must run as root")
    folder = Path(tempfile.mkdtemp(prefix="bp-sshd-"))
    host_key = folder / "host_ed25519"
    user_key = folder / "user_ed25519"
    _keygen(host_key)
    _keygen(user_key)
    shutil.copy(f"{user_key}.pub", folder / "authorized_keys")
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {host_key}\n"
        f"AuthorizedKeysFile {folder}/authorized_keys\n"
        f"PidFile {folder}/sshd.pid\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "AllowTcpForwarding yes\n"
        "MaxSessions 64\n"
        "MaxStartups 64\n"
        "ClientAliveInterval 0\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation folder
    log = (folder / "sshd.log").open("wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            service_missing("sshd", (folder / "sshd.log").read_text(errors="replace")[-500:])
        time.sleep(0.05)
    pub = (folder / "host_ed25519.pub").read_text().split()
    line = f"[127.0.0.1]:{port} {pub[0]} {pub[1]}"
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(line + "\n")
    try:
        yield SSHServer("127.0.0.1", port, folder, user_key, known_hosts, line, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
