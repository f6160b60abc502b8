"""The image container-step tests and bench/steps.py run: busybox-static in an otherwise empty rootfs,
imported into podman (no registry is needed)."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

IMAGE = "localhost/legato-test-busybox:1"
APPLETS = ("sh", "echo", "cat", "sleep", "printf", "env", "ls", "mkdir", "true", "false")
# Where the runtime may not raise rlimits (a VM or an unprivileged container: crun/runc fail with
# "setrlimit RLIMIT_NPROC/NOFILE: Operation not permitted"), containers get lower ones.
DEFAULT_EXTRA_ARGS = "--ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --network none"


def missing_tools() -> str | None:
    """Why the image cannot be built here, or None."""
    if shutil.which("podman") is None or shutil.which("busybox") is None:
        return "needs podman and busybox-static (apt-get install -y podman busybox-static)"
    return None


def podman_image() -> str:
    """Import IMAGE from a rootfs holding /bin/busybox and its applets, once per machine."""
    podman, busybox = shutil.which("podman"), shutil.which("busybox")
    assert podman is not None and busybox is not None, missing_tools()
    if subprocess.run([podman, "image", "exists", IMAGE], check=False).returncode == 0:
        return IMAGE
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        with tarfile.open(rootfs, "w") as tar:
            for folder in ("bin", "tmp", "legato"):
                info = tarfile.TarInfo(folder)
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
                tar.addfile(info)
            tar.add(busybox, arcname="bin/busybox")
            for applet in APPLETS:
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        subprocess.run([podman, "import", str(rootfs), IMAGE], check=True, capture_output=True, timeout=120)
    return IMAGE
