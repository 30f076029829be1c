"""Debian packages a test needs (Slurm and munge for the local cluster, Go for Ollama's template engine), installed
on first use where the test runs as root with apt-get, as in CI; elsewhere the test is skipped and says why."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Optional


def present(binaries: Iterable[str]) -> bool:
    return all(shutil.which(b) or Path("/usr/sbin", b).exists() for b in binaries)


def install(packages: Iterable[str], binaries: Iterable[str]) -> Optional[str]:
    """Install `packages` unless every one of `binaries` is there already; None when done, else why not. No service
    is started (a policy-rc.d that refuses them, since there is no init system)."""
    packages, binaries = list(packages), list(binaries)
    if present(binaries):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"not installed and this user cannot install it (needs root and apt-get): apt-get install " \
               f"{' '.join(packages)}"
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    try:
        res = subprocess.run(command, env=env, capture_output=True, text=True)
        if res.returncode != 0:  # a fresh machine may need the package lists first
            update = subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
            if update.returncode == 0:
                res = subprocess.run(command, env=env, capture_output=True, text=True)
    finally:
        if created:
            policy.unlink()
    if res.returncode != 0:
        return f"apt-get install {' '.join(packages)} failed: {res.stderr.strip()[-500:]}"
    return None if present(binaries) else f"apt-get install {' '.join(packages)} did not provide {binaries}"
