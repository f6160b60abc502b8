"""Make sure podman can start the test image on this machine (``make container-runtime`` runs this).

On a host with hybrid cgroups (v1 controllers beside a v2 hierarchy, as some CI VMs have), podman's
default runtime crun refuses to start any container ("cgroups in hybrid mode not supported"); runc can.
There, as root, this selects runc for podman with a ``containers.conf`` drop-in. It prints what it found
and exits 1 when podman still cannot start a container (the tests marked ``container`` then fail).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.container_image import DEFAULT_EXTRA_ARGS, missing_tools, podman_image

DROP_IN = Path("/etc/containers/containers.conf.d/50-legato-runc.conf")


def start_error(image: str) -> str | None:
    """Why podman cannot start ``image`` here (its stderr), or None when it can."""
    argv = ["podman", "run", "--rm", *shlex.split(DEFAULT_EXTRA_ARGS), image, "true"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit code {done.returncode}")


def main() -> int:
    why = missing_tools()
    if why is not None:
        print(f"container-runtime: {why}")
        return 1
    image = podman_image()
    error = start_error(image)
    if error is not None and "hybrid mode" in error and shutil.which("runc") and os.geteuid() == 0:
        print(f"container-runtime: crun cannot start containers here ({error}); podman will use runc")
        DROP_IN.parent.mkdir(parents=True, exist_ok=True)
        DROP_IN.write_text(
            '# Written by Legato\'s "make container-runtime": crun refuses hybrid cgroups.\n'
            '[engine]\nruntime = "runc"\n'
        )
        error = start_error(image)
    if error is not None:
        print(f"container-runtime: podman cannot start a container here: {error}")
        return 1
    print("container-runtime: podman starts containers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
