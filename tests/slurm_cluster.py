"""A real one-node SLURM cluster on localhost, for the integration tests (tests/test_slurm.py).

Debian's slurmctld + slurmd (Slurm 22.05) and munge, started without systemd:
- a munged of its own, as root, with its own key and socket under the cluster's folder
  (AuthInfo=socket=...), so clusters started side by side never share or stop each other's;
- slurmctld and slurmd run in the foreground as root (SlurmUser=root), with their
  configuration, state, spool, pid and log files in a temporary folder; clients find the
  cluster through the SLURM_CONF environment variable (see ``LocalCluster.env``);
- no cgroups (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none);
- fake GPUs: gres.conf points at character devices made with mknod, so jobs that ask for
  ``--gres=gpu:N`` get CUDA_VISIBLE_DEVICES set by SLURM as on a real GPU node;
- DependencyParameters=kill_invalid_depend, so the dependents of a failed job are CANCELLED
  (not pending forever); MinJobAge=86400 keeps every finished job's record (0 is refused by 22.05), since without
  slurmdbd ``scontrol show job`` is the only place to read how a job ended.

``LocalCluster(root, accounting=True)`` also keeps accounts, as a site with ``sacct`` does: a
private MariaDB (mariadbd as root, its data, socket and pid under the root, on a free port of
127.0.0.1) and slurmdbd (slurmdbd.conf next to slurm.conf, where slurmdbd looks through
SLURM_CONF), the cluster registered with ``sacctmgr``, and MinJobAge=2 so that slurmctld forgets
a finished job within seconds (its purge runs every 10 s at such ages) and only sacct knows it.

Every daemon this module starts is stopped by its own process id.

Run by hand: ``python tests/slurm_cluster.py /tmp/cluster [--accounting]`` starts one and prints
the SLURM_CONF to export; Ctrl-C or SIGTERM stops it.
"""
from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
ACCOUNTING = ("slurmdbd", "mariadbd", "mariadb-install-db", "sacct", "sacctmgr")
# A test database: small InnoDB files and buffers instead of a server's hundreds of MB.
MARIADB_SMALL = ("--innodb-log-file-size=4M", "--innodb-buffer-pool-size=16M")


def _sbin(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def missing_binaries() -> list[str]:
    """The SLURM/munge programs this machine lacks (empty when a cluster can start)."""
    return [name for name in (*DAEMONS, *CLIENTS, "munge", "unmunge", "mungekey") if _sbin(name) is None]


def why_cannot_start() -> str | None:
    missing = missing_binaries()
    if missing:
        return ("SLURM is not installed (missing: " + ", ".join(missing) + "); install it with "
                "`apt-get install --no-install-recommends slurmctld slurmd slurm-client munge`, as .ci/run does")
    if os.geteuid() != 0:
        return "starting a local SLURM cluster needs root (its daemons, munged included, run as root)"
    return None


def why_no_accounting() -> str | None:
    missing = [name for name in ACCOUNTING if _sbin(name) is None]
    if missing:
        return ("SLURM accounting is not installed (missing: " + ", ".join(missing) + "); install it with "
                "`apt-get install --no-install-recommends slurmdbd mariadb-server`")
    return None


def _free_ports(n: int) -> list[int]:
    # All bound at once, so the n ports differ.
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class LocalCluster:
    """``with LocalCluster(folder) as cluster:`` starts the daemons and waits for the node."""

    def __init__(self, root: Path, cpus: int = 2, gpus: int = 2, mem_mb: int = 8000, node: str = "localhost",
                 accounting: bool = False):
        self.root = Path(root)
        self.cpus, self.gpus, self.mem_mb, self.node = cpus, gpus, mem_mb, node
        self.accounting = accounting
        self.conf = self.root / "etc" / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.partition = "debug"
        self.no_gpus_because = "" if gpus else "the cluster was started without GPUs"

    # -- configuration -------------------------------------------------------------------
    def write_config(self) -> None:
        etc, state, spool, log, dev = (self.root / d for d in ("etc", "state", "spool", "log", "dev"))
        for d in (etc, state, spool, log, dev):
            d.mkdir(parents=True, exist_ok=True)
        devices = []
        for i in range(self.gpus):
            path = dev / f"nvidia{i}"
            try:
                if not path.exists():
                    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))   # a character device, like /dev/null
            except OSError as e:     # no CAP_MKNOD here: a cluster without GPUs
                self.no_gpus_because = f"cannot make fake GPU devices with mknod: {e}"
                self.gpus, devices = 0, []
                break
            devices.append(str(path))
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        ctld_port, slurmd_port, self.dbd_port, self.db_port = _free_ports(4)
        lines = {
            "ClusterName": "mapdtest",
            "SlurmctldHost": self.node,
            "SlurmctldPort": ctld_port,
            "SlurmdPort": slurmd_port,
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={self.munge_socket}",
            "StateSaveLocation": state,
            "SlurmdSpoolDir": spool,
            "SlurmctldPidFile": self.root / "slurmctld.pid",
            "SlurmdPidFile": self.root / "slurmd.pid",
            "SlurmctldLogFile": log / "slurmctld.log",
            "SlurmdLogFile": log / "slurmd.log",
            "SlurmctldDebug": "info",
            "SlurmdDebug": "info",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            **({"AccountingStorageType": "accounting_storage/slurmdbd", "AccountingStorageHost": self.node,
                "AccountingStoragePort": self.dbd_port,
                # The munged of connections to slurmdbd (AuthInfo covers only those within the cluster).
                "AccountingStoragePass": self.munge_socket} if self.accounting
               else {"AccountingStorageType": "accounting_storage/none"}),
            "JobCompType": "jobcomp/none",
            "MpiDefault": "none",
            "SchedulerType": "sched/backfill",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core_Memory",
            # Without a default memory per CPU a job takes the whole node's memory, and array
            # tasks run one at a time.
            "DefMemPerCPU": self.mem_mb // (2 * self.cpus),
            "GresTypes": "gpu",
            "DependencyParameters": "kill_invalid_depend",
            "MinJobAge": 2 if self.accounting else 86400,
            "JobRequeue": 1,
            "ReturnToService": 2,
            "SlurmdParameters": "config_overrides",
            "SlurmctldTimeout": 30,
            "SlurmdTimeout": 30,
            "KillWait": 5,
            "InactiveLimit": 0,
        }
        text = "".join(f"{k}={v}\n" for k, v in lines.items())
        text += (f"NodeName={self.node} CPUs={self.cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket={self.cpus} "
                 f"ThreadsPerCore=1 RealMemory={self.mem_mb}{gres} State=UNKNOWN\n"
                 f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP\n")
        self.conf.write_text(text)
        gres_conf = "".join(f"NodeName={self.node} Name=gpu File={d}\n" for d in devices)
        (etc / "gres.conf").write_text(gres_conf)
        if self.accounting:
            self._write_slurmdbd_conf()

    def _write_slurmdbd_conf(self) -> None:
        # slurmdbd refuses a slurmdbd.conf that others may read (it may hold the database password)
        # or that SlurmUser does not own.
        path = self.conf.with_name("slurmdbd.conf")
        path.write_text(f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\nDbdHost={self.node}\nDbdPort={self.dbd_port}\nSlurmUser=root\n"
                        f"StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\nStoragePort={self.db_port}\n"
                        f"StorageUser=root\nStorageLoc=slurm_acct_db\nPidFile={self.root / 'slurmdbd.pid'}\n"
                        f"LogFile={self.root / 'log' / 'slurmdbd.log'}\nDebugLevel=info\n")
        os.chown(path, 0, 0)
        path.chmod(0o600)

    @property
    def env(self) -> dict[str, str]:
        """The environment for SLURM clients (and jobs) of this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- daemons -------------------------------------------------------------------------
    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def _munge_works(self) -> bool:
        sock = f"--socket={self.munge_socket}"
        try:
            cred = subprocess.run([_sbin("munge"), sock, "-n"], capture_output=True, timeout=5, check=True).stdout
            subprocess.run([_sbin("unmunge"), sock], input=cred, capture_output=True, timeout=5, check=True)
            return True
        except (subprocess.SubprocessError, OSError):
            return False

    def _start_munge(self) -> None:
        folder = self.munge_socket.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = folder / "munge.key"
        if not key.is_file():
            subprocess.run([_sbin("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        key.chmod(0o400)
        with open(self.root / "log" / "munged.out", "ab") as log:
            self.procs["munged"] = subprocess.Popen(
                [_sbin("munged"), "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                 f"--pid-file={folder / 'munged.pid'}", f"--seed-file={folder / 'munged.seed'}",
                 f"--log-file={self.root / 'log' / 'munged.log'}"],
                stdout=log, stderr=subprocess.STDOUT)
        self._wait(self._munge_works, "munged to answer", 15)

    def _spawn(self, name: str, args: list[str]) -> None:
        with open(self.root / "log" / f"{name}.out", "ab") as log:
            self.procs[name] = subprocess.Popen([_sbin(name), *args], env=self.env, stdout=log,
                                                stderr=subprocess.STDOUT)

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode} while waiting for {what}; "
                                       f"see {self.root / 'log'}")
            if ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; see {self.root / 'log'}")

    def _start_accounting(self) -> None:
        data = self.root / "mariadb"
        if not (data / "mysql").is_dir():
            subprocess.run([_sbin("mariadb-install-db"), "--no-defaults", f"--datadir={data}", "--user=root",
                            "--auth-root-authentication-method=normal", "--skip-test-db", *MARIADB_SMALL],
                           check=True, capture_output=True)
        self._spawn("mariadbd", ["--no-defaults", f"--datadir={data}", "--user=root",
                                 f"--socket={self.root / 'mariadb.sock'}", f"--pid-file={self.root / 'mariadb.pid'}",
                                 "--bind-address=127.0.0.1", f"--port={self.db_port}",
                                 f"--log-error={self.root / 'log' / 'mariadb.log'}", *MARIADB_SMALL])
        self._wait(lambda: _answers(self.db_port), "MariaDB to accept connections", 60)
        self._spawn("slurmdbd", ["-D"])
        self._wait(lambda: self._sacctmgr("list", "cluster").returncode == 0, "slurmdbd to answer", 60)
        self._sacctmgr("add", "cluster", "mapdtest", check=True)

    def _sacctmgr(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run([_sbin("sacctmgr"), "-i", "-n", *args], env=self.env, capture_output=True, text=True,
                              timeout=30, check=check)

    def node_state(self) -> str:
        out = subprocess.run(["scontrol", "-o", "show", "node", self.node], env=self.env,
                             capture_output=True, text=True).stdout
        for item in out.split():
            if item.startswith("State="):
                return item[len("State="):]
        return ""

    def start(self) -> "LocalCluster":
        why = why_cannot_start() or (self.accounting and why_no_accounting())
        if why:
            raise RuntimeError(why)
        self.write_config()
        self._start_munge()
        if self.accounting:
            self._start_accounting()
        self._spawn("slurmctld", ["-D", "-c", "-f", str(self.conf)])
        self._spawn("slurmd", ["-D", "-N", self.node, "-f", str(self.conf)])
        self._wait(lambda: self.node_state().startswith("IDLE"), "the node to be IDLE", 60)
        return self

    def jobs(self) -> list[str]:
        out = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True).stdout
        return out.split()

    def stop(self) -> None:
        """Cancel what is still queued, then stop the daemons this object started, by pid."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            ids = self.jobs()
            if ids:
                subprocess.run(["scancel", *ids], env=self.env, capture_output=True)
                time.sleep(1)
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            p = self.procs.pop(name, None)
            if p is None:
                continue
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def __enter__(self) -> "LocalCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    import signal
    import sys

    signal.signal(signal.SIGTERM, signal.default_int_handler)   # stop cleanly on kill PID too
    signal.signal(signal.SIGINT, signal.default_int_handler)

    args = [a for a in sys.argv[1:] if a != "--accounting"]
    root = Path(args[0] if args else "/tmp/mapd-slurm-cluster")
    with LocalCluster(root, accounting="--accounting" in sys.argv) as cluster:
        print(f"export SLURM_CONF={cluster.conf}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
