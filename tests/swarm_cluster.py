"""A real two-node Docker Swarm on one machine, for the tests and the benchmark (``/work/shared``'s recipe).

Two ``dockerd`` (Debian's ``docker.io``), each with its own data root, exec root and socket, vfs storage, no
bridge and no iptables changes; the first listens for the swarm on 127.0.0.1, the second on 127.0.0.2 (both
loopback), so the two nodes have distinct addresses on one machine. Each gets the test image imported (the
one ``tests/engine/start.sh`` builds for podman: empty directories, entrypoint ``/app/llama-server``; no
registry here) and node labels: ``llm-gateway.name`` (a, b) and ``llm-gateway.address``.

What dockerd leaves behind, and ``Swarm.close`` removes: the swarm state (``swarm leave --force``), dockerd
and its containerd (SIGTERM, then SIGKILL after a grace), the containers' processes under their shims (an
orphaned container of a SIGKILLed dockerd keeps running), the ``docker_gwbridge`` link, the nsfs mounts under
each exec root's ``netns`` and the data root's bind mounts, and ``/run/docker``.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

IMAGE = "localhost/llm-gateway-llamacpp:test"
IMAGE_CHANGES = [
    'ENTRYPOINT ["/app/llama-server"]',
    "ENV LD_LIBRARY_PATH=/app",
    "ENV PATH=/app:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "WORKDIR /app",
]
GRACE = 5.0


def image_tar() -> bytes:
    """The test image's root file system: empty directories, and bin, lib, lib64 as links into usr."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("usr", "tmp", "etc", "proc", "sys", "dev", "app"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        for name in ("bin", "lib", "lib64"):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, f"usr/{name}"
            tar.addfile(info)
    return buffer.getvalue()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _signed(directory: Path, name: str, ca: str, subject: str, ext: str) -> None:
    """A key and a certificate ``name``, signed by the CA ``ca`` (files ``<ca>.pem``, ``<ca>-key.pem``)."""
    key, csr, cert = (directory / f"{name}{suffix}" for suffix in ("-key.pem", ".csr", ".pem"))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-subj", subject, "-out", str(csr))
    (directory / f"{name}.ext").write_text(ext)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(directory / f"{ca}.pem"),
        "-CAkey", str(directory / f"{ca}-key.pem"), "-CAcreateserial", "-days", "2",
        "-extfile", str(directory / f"{name}.ext"), "-out", str(cert),
    )  # fmt: skip


def tls_material(directory: Path) -> Path:
    """A CA; a server certificate for 127.0.0.1; a client certificate of that CA (``client``), and one of
    another CA (``rogue``), which the server must refuse."""
    directory.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=test {ca}",
            "-keyout", str(directory / f"{ca}-key.pem"), "-out", str(directory / f"{ca}.pem"),
        )  # fmt: skip
    _signed(
        directory,
        "server",
        "ca",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    _signed(directory, "client", "ca", "/CN=gateway", "extendedKeyUsage=clientAuth\n")
    _signed(directory, "rogue", "other-ca", "/CN=gateway", "extendedKeyUsage=clientAuth\n")
    return directory


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
    return found


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Dockerd:
    """One Docker engine: its own directories and socket; ``address`` is its node's address."""

    root: Path
    address: str
    tls_args: list[str] = field(default_factory=list)
    tcp: str | None = None  # also listen on tcp://HOST:PORT (with tls_args)
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.root / "d.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, deadline: float = 60.0) -> None:
        for d in ("root", "exec"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        hosts = ["-H", self.url] + (["-H", self.tcp] if self.tcp else [])
        log = (self.root / "dockerd.log").open("ab")
        self.process = subprocess.Popen(
            [
                "dockerd", "--data-root", str(self.root / "root"), "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "dockerd.pid"), *hosts, "--iptables=false", "--ip6tables=false",
                "--ip-masq=false", "--bridge=none", "--storage-driver=vfs", *self.tls_args,
            ],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        log.close()
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"dockerd {self.root} exited: {(self.root / 'dockerd.log').read_text()[-2000:]}"
                )
            if self._accepts():  # the SDK's unix transport leaks the socket of a failed connect: probe first
                with contextlib.suppress(Exception), contextlib.closing(self.client(timeout=2)) as client:
                    client.ping()
                    return
            time.sleep(0.1)
        raise RuntimeError(f"dockerd {self.root} did not answer within {deadline}s")

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def client(self, timeout: int = 60) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, timeout=timeout)

    def pids(self) -> list[int]:
        """dockerd, its containerd, the shims and every process under them (the containers')."""
        mine = set(_processes_mentioning(str(self.root / "exec")))
        if self.process is not None and self.process.poll() is None:
            mine.add(self.process.pid)
        for pid in list(mine):
            mine.update(_descendants(pid))
        return sorted(mine)

    def kill(self) -> None:
        """SIGKILL of dockerd and its containerd, as when a host dies (the containers' shims live on)."""
        daemons = [p for p in self.pids() if _is_daemon(p)]
        _kill(daemons, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(30)

    def stop(self) -> None:
        """Stop the daemon and everything under it: SIGTERM, then SIGKILL after a grace."""
        pids = self.pids()
        _kill(pids, signal.SIGTERM)
        end = time.monotonic() + GRACE
        while time.monotonic() < end and any(_alive(p) for p in pids):
            time.sleep(0.1)
        _kill(self.pids() + pids, signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(30)
        # Whatever still runs under a shim that outlived its containerd (an orphaned container).
        _kill(self.pids(), signal.SIGKILL)

    def unmount(self) -> None:
        """Unmount what dockerd left mounted under its directories (nsfs under netns, bind mounts)."""
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for point in sorted((m for m in mounts if m.startswith(str(self.root))), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _other_dockerd() -> bool:
    """Some dockerd runs that is not one of ours (another swarm of the machine): its bridge must stay."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "dockerd" and _alive(int(entry.name)):
                    return True
    return False


def _is_daemon(pid: int) -> bool:
    with contextlib.suppress(OSError):
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        return name in ("dockerd", "containerd")
    return False


class Swarm:
    """Two engines forming one swarm: ``manager`` (node ``a``, 127.0.0.1), ``worker`` (``b``, 127.0.0.2)."""

    def __init__(self, base: Path, tls: Path | None = None) -> None:
        """``tls``: a directory of ``tls_material``: the manager also listens on ``tls_url``, verifying
        client certificates."""
        self.base = base
        self.manager = Dockerd(base / "a", "127.0.0.1")
        self.tls = tls
        self.tls_url: str | None = None
        if tls is not None:
            tcp = f"tcp://127.0.0.1:{free_port()}"
            self.manager.tcp, self.tls_url = tcp, tcp
            self.manager.tls_args = [
                "--tlsverify", f"--tlscacert={tls / 'ca.pem'}", f"--tlscert={tls / 'server.pem'}",
                f"--tlskey={tls / 'server-key.pem'}",
            ]  # fmt: skip
        self.worker = Dockerd(base / "b", "127.0.0.2")
        self.port = free_port()  # the swarm's listen port (the same on both addresses)
        self.nodes: dict[str, str] = {}  # label host -> node id

    def start(self) -> Swarm:
        try:
            for engine in (self.manager, self.worker):
                engine.start()
                self.import_image(engine)
            with (
                contextlib.closing(self.manager.client()) as m,
                contextlib.closing(self.worker.client()) as w,
            ):
                m.swarm.init(advertise_addr="127.0.0.1", listen_addr=f"127.0.0.1:{self.port}")
                token = m.swarm.attrs["JoinTokens"]["Worker"]
                w.swarm.join(
                    remote_addrs=[f"127.0.0.1:{self.port}"],
                    join_token=token,
                    listen_addr=f"127.0.0.2:{self.port}",
                    advertise_addr="127.0.0.2",
                )
                for engine, host in ((m, "a"), (w, "b")):
                    node_id = engine.info()["Swarm"]["NodeID"]
                    self.nodes[host] = node_id
                    self.label(m, node_id, host)
        except BaseException:
            self.close()
            raise
        return self

    @staticmethod
    def label(manager: Any, node_id: str, host: str) -> None:
        node = manager.nodes.get(node_id)
        spec = dict(node.attrs["Spec"])
        address = "127.0.0.1" if host == "a" else "127.0.0.2"
        spec["Labels"] = {**spec.get("Labels", {}), "llm-gateway.name": host, "llm-gateway.address": address}
        node.update(spec)

    @staticmethod
    def import_image(engine: Dockerd) -> None:
        with contextlib.closing(engine.client()) as client:
            repository, tag = IMAGE.rsplit(":", 1)
            client.api.import_image_from_data(
                image_tar(), repository=repository, tag=tag, changes=IMAGE_CHANGES
            )

    def node_state(self, host: str) -> str:
        with contextlib.closing(self.manager.client(timeout=10)) as m:
            return str(m.nodes.get(self.nodes[host]).attrs["Status"]["State"])

    def close(self) -> None:
        for engine in (self.worker, self.manager):
            if engine.process is not None and engine.process.poll() is None:
                with contextlib.suppress(Exception), contextlib.closing(engine.client(timeout=10)) as client:
                    client.swarm.leave(force=True)
        for engine in (self.worker, self.manager):
            engine.stop()
        for engine in (self.worker, self.manager):
            engine.unmount()
        if not _other_dockerd():  # the bridge and /run/docker are shared by every dockerd of the machine
            subprocess.run(["ip", "link", "delete", "docker_gwbridge"], check=False, capture_output=True)
            shutil.rmtree("/run/docker", ignore_errors=True)
        shutil.rmtree(self.base, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What cleanup must have removed: processes, mounts, the bridge (for the test of the cleanup)."""
        found = [f"process {p}" for e in (self.manager, self.worker) for p in e.pids()]
        mounts = Path("/proc/self/mountinfo").read_text()
        found += [f"mount {line.split()[4]}" for line in mounts.splitlines() if str(self.base) in line]
        links = subprocess.run(["ip", "link", "show", "docker_gwbridge"], capture_output=True, check=False)
        if links.returncode == 0 and not _other_dockerd():
            found.append("link docker_gwbridge")
        return found
