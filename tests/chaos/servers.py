"""The harness's own servers: PostgreSQL, Redis, NATS and RabbitMQ, each started on a
free loopback port with its data in a temporary folder, so that restarting one never
touches the machine's shared servers (PostgreSQL on 5432 and the others of
SERVICES.md).

A server whose binary is missing raises :class:`Unavailable` with the reason; the
scenario that needs it is skipped (it fails when ``CI`` is set).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["Nats", "Postgres", "RabbitMQ", "Redis", "Unavailable", "find_binary", "free_port"]


class Unavailable(Exception):
    """A server or a privilege the scenario needs is not there; the message says why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_binary(name: str, *patterns: str) -> str:
    """The first of ``patterns`` (globs) that exists, else ``name`` on PATH."""
    for pattern in patterns:
        for path in sorted(glob.glob(pattern), reverse=True):
            if os.access(path, os.X_OK):
                return path
    found = shutil.which(name)
    if found:
        return found
    for pattern in (*patterns, f"/usr/local/bin/{name}", f"/usr/sbin/{name}"):
        for path in sorted(glob.glob(pattern), reverse=True):
            if os.access(path, os.X_OK):
                return path
    raise Unavailable(f"{name} not found on PATH nor in {', '.join(patterns) or '/usr/sbin'}")


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until something accepts on 127.0.0.1:port (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise Unavailable(f"the server on port {port} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise Unavailable(f"nothing listens on port {port} after {timeout:.0f} s")
        time.sleep(0.05)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Process:
    """A server run as a child process; ``restart`` kills it (SIGKILL unless
    ``graceful``), waits ``down`` seconds and starts it again on the same data."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    startup = 30.0

    def start(self) -> None:
        with open(self.folder / "server.log", "ab") as log:
            # a session of its own: a stop reaches the children a start script forks
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.folder,
                start_new_session=True,
            )
        wait_port(self.port, self.startup, self.proc)

    def stop(self, graceful: bool = True) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        group = self.proc.pid  # its session's process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        deadline = time.monotonic() + 60
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)

    def restart(self, down: float, graceful: bool = False) -> None:
        self.stop(graceful)
        time.sleep(down)
        self.start()


class Redis(_Process):
    """redis-server with an append-only file fsynced at every write, so a restart
    loses no acknowledged XADD."""

    def command(self) -> list[str]:
        return [
            find_binary("redis-server"),
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class Nats(_Process):
    """nats-server with JetStream, its store in the folder."""

    def command(self) -> list[str]:
        return [
            find_binary("nats-server"),
            "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.folder / "js"),
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


class RabbitMQ(_Process):
    """A second RabbitMQ node: its own name, ports (AMQP and distribution), database
    and logs, no plugins. It shares the machine's epmd (port 4369), as every node of a
    host does."""

    startup = 120.0

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.dist_port = free_port()
        self.node = f"chaos{self.port}@localhost"

    def command(self) -> list[str]:
        # the script itself, not Debian's wrapper, which switches to the rabbitmq user
        return [find_binary("rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server")]

    def env(self) -> dict[str, str]:
        for sub in ("mnesia", "log"):
            (self.folder / sub).mkdir(exist_ok=True)
        plugins = self.folder / "enabled_plugins"
        plugins.write_text("[].\n")
        conf = self.folder / "rabbitmq"
        conf.with_suffix(".conf").write_text("loopback_users = none\n")
        return {
            **os.environ,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_CONFIG_FILE": str(conf),
            "RABBITMQ_PID_FILE": str(self.folder / "rabbit.pid"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.folder / "advanced.config"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"


class Postgres:
    """A PostgreSQL cluster of its own: ``initdb`` in the folder, ``postgres`` on a free
    port, its socket in the folder. PostgreSQL refuses to run as root: run as root, the
    cluster belongs to the ``postgres`` user."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.bin = Path(find_binary("pg_ctl", "/usr/lib/postgresql/*/bin/pg_ctl")).parent
        for tool in ("initdb", "postgres"):
            if not (self.bin / tool).exists():
                raise Unavailable(f"{tool} not found beside {self.bin / 'pg_ctl'}")
        self.user: str | None = None
        if os.geteuid() == 0:
            import pwd

            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root, no postgres user to own the cluster") from None
            self.user = "postgres"
        self.data = folder / "data"

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self.user,
            cwd="/",
            check=False,
        )
        if done.returncode != 0:
            raise Unavailable(f"{' '.join(args[:2])} failed: {done.stderr.strip()[-500:]}")

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            shutil.chown(self.folder, self.user)
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self._pg_ctl_start()

    def _pg_ctl_start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} "
            "-c fsync=on -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"),
            "-o", options, "-w", "-t", "120", "start",
        )  # fmt: skip

    def crash(self) -> None:
        """``pg_ctl stop -m immediate``: no shutdown checkpoint, recovery at start."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def restart(self, down: float) -> None:
        self.crash()
        time.sleep(down)
        self._pg_ctl_start()

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
