"""A real two-node Slurm cluster on this machine, for tests: Debian's munged, slurmctld and two slurmd daemons (nodes
n1 and n2) on loopback, every file under one folder the test owns, stopped by PID. Jobs are real `sbatch` jobs.

`LocalSlurm.start()` raises `SlurmUnavailable` with the reason when the cluster cannot run here (no packages and no
root to install them); tests turn that into a skip that says why.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

from tests.debian import install

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
HOSTS_MARK = "# sft-launcher test cluster"
DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "sinfo")


class SlurmUnavailable(RuntimeError):
    pass


def ensure_installed() -> None:
    """Install Debian's Slurm and munge when missing (root and apt-get needed; ~10 s); services are not started."""
    why = install(PACKAGES, DAEMONS)
    if why:
        raise SlurmUnavailable(f"Slurm {why}")


SLURM_CONF = """ClusterName=sftlocal
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge/munge.sock,cred_expire=5
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/slurmd-%n
SlurmctldPidFile={dir}/run/slurmctld.pid
SlurmdPidFile={dir}/run/slurmd-%n.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1,bf_interval=1
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=10
JobRequeue=1
{gres_types}
NodeName=n[1-2] NodeHostname={hostname} NodeAddr=127.0.0.1 Port={node_ports} CPUs=4 RealMemory=16000 Feature=sftlocal {gres} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
# Fake GPUs, so that --gres gpu:N jobs are scheduled: character devices (plain files are refused), autodetection off.
# Slurm sets CUDA_VISIBLE_DEVICES for them; a CPU test must not trust it (no CUDA behind them).
GRES_CONF = """AutoDetect=off
NodeName=n[1-2] Name=gpu File={dir}/fakedev/nvidia[0-3]
"""


class LocalSlurm:
    def __init__(self, root: Path, ctld_port: int = 16817, first_node_port: int = 17101):
        self.dir = Path(root)
        self.ctld_port = ctld_port
        self.node_ports = (first_node_port, first_node_port + 1)
        self.conf = self.dir / "slurm.conf"
        self._hosts_added = False
        self.gres = False  # whether the nodes have 4 fake GPUs each (needs mknod: root and a file system with devices)

    # -- bring-up -----------------------------------------------------------------------------------------------------

    def start(self) -> "LocalSlurm":
        ensure_installed()
        if os.geteuid() != 0:
            raise SlurmUnavailable("the local cluster runs its daemons as root (SlurmUser=root); this user is not root")
        for sub in ("munge", "state", "spool", "run", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "munge").chmod(0o755)  # munged refuses a socket folder that is o+w, and clients need o+x
        self._resolve_node_names()
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self._run([_sbin("munged"), f"--socket={self.dir}/munge/munge.sock", f"--key-file={key}",
                   f"--pid-file={self.dir}/run/munged.pid", f"--log-file={self.dir}/log/munged.log",
                   f"--seed-file={self.dir}/munge/munge.seed", "--force"])
        self.gres = self._fake_gpus()
        self.conf.write_text(SLURM_CONF.format(dir=self.dir, hostname=socket.gethostname(), ctld_port=self.ctld_port,
                                               node_ports=f"{self.node_ports[0]}-{self.node_ports[1]}",
                                               gres_types="GresTypes=gpu" if self.gres else "",
                                               gres="Gres=gpu:4" if self.gres else ""))
        if self.gres:
            (self.dir / "gres.conf").write_text(GRES_CONF.format(dir=self.dir))
        self._run([_sbin("slurmctld"), "-f", str(self.conf)])
        for node in ("n1", "n2"):
            self._run([_sbin("slurmd"), "-f", str(self.conf), "-N", node])
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.nodes_idle():
                return self
            time.sleep(0.2)
        logs = "\n".join(p.read_text()[-1500:] for p in (self.dir / "log").glob("*.log"))
        self.stop()
        raise SlurmUnavailable(f"the local Slurm cluster did not come up within 60 s:\n{logs}")

    def _fake_gpus(self) -> bool:
        dev = self.dir / "fakedev"
        dev.mkdir(exist_ok=True)
        try:
            for i in range(4):
                if not (dev / f"nvidia{i}").exists():
                    os.mknod(dev / f"nvidia{i}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
        except OSError:
            return False
        return True

    def _run(self, argv) -> None:
        res = subprocess.run(argv, env=self.env(), capture_output=True, text=True)
        if res.returncode != 0:
            self.stop()
            raise SlurmUnavailable(f"{' '.join(argv)} failed: {res.stderr.strip()[-800:]}")

    def _resolve_node_names(self) -> None:
        try:
            socket.gethostbyname("n1")
            socket.gethostbyname("n2")
            return
        except OSError:
            pass
        with open("/etc/hosts", "a") as f:
            f.write(f"127.0.0.1 n1 n2 {HOSTS_MARK}\n")
        self._hosts_added = True

    def env(self, **extra) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.conf), **extra}

    # -- tear-down ----------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        pids = [self.dir / "run" / f for f in ("slurmd-n1.pid", "slurmd-n2.pid", "slurmctld.pid", "munged.pid")]
        live = []
        for pid_file in pids:
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                live.append(pid)
            except (OSError, ValueError):
                continue
        deadline = time.time() + 15
        while live and time.time() < deadline:
            live = [p for p in live if _alive(p)]
            time.sleep(0.1)
        for pid in live:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self._hosts_added:
            lines = Path("/etc/hosts").read_text().splitlines(keepends=True)
            Path("/etc/hosts").write_text("".join(line for line in lines if HOSTS_MARK not in line))
            self._hosts_added = False

    # -- jobs ---------------------------------------------------------------------------------------------------------

    def job(self, job_id: str) -> dict:
        """The job's record from scontrol (no accounting here): JobState, ExitCode, Restarts, ..."""
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=self.env(), capture_output=True,
                             text=True).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def nodes_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=self.env(), capture_output=True, text=True)
        states = out.stdout.split()
        return out.returncode == 0 and len(states) == 2 and all(state == "idle" for state in states)

    def wait(self, job_id: str, timeout: float = 600, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                                "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            record = self.job(job_id)
            if record.get("JobState") in states:
                return record
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} not finished after {timeout} s: {self.job(job_id)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin") / name)
