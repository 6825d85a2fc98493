"""The guest's kernel and initramfs, built from Debian's packages and cached.

The kernel comes from ``apt-get download linux-image-<version>-amd64`` unpacked with
``dpkg-deb -x`` (nothing is installed on the host); the initramfs holds a static busybox
(package ``busybox-static``), the few modules the checks need (their dependencies read from
each module's ``depends=`` line, so no ``depmod`` is needed) and an ``/init`` that mounts the
host's filesystem read-only over 9p, puts a tmpfs on its /tmp (binding back the paths listed
in the share's ``carry``) and runs ``run.sh`` from the results share. Nothing in the
initramfs names this checkout, so one build serves every checkout; it is cached under
``~/.cache/devassign-vm/`` keyed by the package versions.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Bump when the initramfs layout or /init changes: the cache key includes it.
FORMAT = 2
CACHE = Path(os.environ.get("DEVASSIGN_VM_CACHE", Path.home() / ".cache" / "devassign-vm"))
BUSYBOX = Path("/bin/busybox")

# Loaded in this order (each after its dependencies) by /init. Drivers bind as they load.
MODULES = (
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "crct10dif_common",
    "crc-t10dif",
    "crc64-rocksoft",
    "t10-pi",
    "vfio",
    "vfio_iommu_type1",
    "vfio-pci",
    "nvme",
    "e1000e",
    "xhci-pci",
    "usb-storage",
    "sd_mod",
    "usbhid",
    "hid-generic",
)

INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /bin /sbin /proc /sys /dev /host
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "DEVASSIGN-VM: init started, kernel $(uname -r)"
for m in $(cat /modules.order); do
  insmod /lib/modules/$m.ko || echo "DEVASSIGN-VM: insmod $m failed"
done
ip link set lo up
fail() { echo "DEVASSIGN-VM: FATAL $*"; poweroff -f; }
mkdir -p /out /origtmp
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostfs /host \
  || fail "cannot mount the host filesystem (9p hostfs)"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out /out \
  || fail "cannot mount the results share (9p out)"
# A writable /tmp; what the checks need from the host's /tmp (a virtualenv) is bound back in.
mount -o bind /host/tmp /origtmp || fail "cannot keep the host's /tmp"
mount -t tmpfs -o size=256m tmpfs /host/tmp || fail "cannot mount a tmpfs on /host/tmp"
mkdir -p /host/tmp/out && mount -o bind /out /host/tmp/out || fail "cannot bind the results share"
for p in $(cat /out/carry 2>/dev/null); do
  mkdir -p "/host/tmp/$p" && mount -o bind "/origtmp/$p" "/host/tmp/$p" || fail "cannot carry /tmp/$p"
done
for d in proc sys dev; do mount -o bind /$d /host/$d || fail "cannot bind /$d into /host"; done
echo "DEVASSIGN-VM: running the checks"
chroot /host /bin/sh /tmp/out/run.sh
echo "DEVASSIGN-VM: checks exited with $?"
sync
poweroff -f
"""


class PrepareError(RuntimeError):
    """The guest cannot be built here; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initramfs: Path
    kernel_release: str  # uname -r in the guest, e.g. 6.1.0-57-amd64
    kernel_package: str  # e.g. linux-image-6.1.0-57-amd64=6.1.192-3
    busybox_version: str


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd, timeout=600)
    except FileNotFoundError as exc:
        raise PrepareError(f"{what}: {argv[0]} is not installed (a Debian host is needed)") from exc
    if done.returncode != 0:
        raise PrepareError(f"{what}: {' '.join(argv)} failed: {done.stderr.strip()[-800:]}")
    return done.stdout


def kernel_release() -> str:
    """``6.1.0-57-amd64``: ``$DEVASSIGN_VM_KERNEL``, else what ``linux-image-amd64`` depends on."""
    wanted = os.environ.get("DEVASSIGN_VM_KERNEL")
    if wanted:
        return wanted
    out = _run(["apt-cache", "depends", "linux-image-amd64"], "finding Debian's kernel")
    found = re.search(r"Depends:\s*linux-image-(\S+-amd64)\b", out)
    if not found:
        raise PrepareError(
            "finding Debian's kernel: apt-cache knows no linux-image-amd64 (run apt-get update)"
        )
    return found.group(1)


def package_version(package: str) -> str:
    out = _run(["apt-cache", "show", "--no-all-versions", package], f"looking up {package}")
    found = re.search(r"^Version:\s*(\S+)", out, re.M)
    if not found:
        raise PrepareError(f"apt-cache has no version of {package} (run apt-get update)")
    return found.group(1)


def busybox_version() -> str:
    """The installed ``busybox-static`` (its /bin/busybox runs without libraries)."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Status} ${Version}", "busybox-static"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except FileNotFoundError:
        out = ""
    if not out.startswith("install ok installed") or not BUSYBOX.is_file():
        raise PrepareError(
            "busybox-static is not installed: apt-get install -y busybox-static "
            "(the guest's shell; the plain busybox package is not static)"
        )
    return out.split()[-1]


def module_depends(ko: Path) -> list[str]:
    """The ``depends=`` names in a module's .modinfo section (comma-separated, maybe empty)."""
    found = re.search(rb"(?<![^\x00])depends=([A-Za-z0-9_,-]*)\x00", ko.read_bytes())
    return [d for d in found.group(1).decode().split(",") if d] if found else []


def _norm(name: str) -> str:
    return name.replace("-", "_")


def resolve_modules(moddir: Path, wanted: Iterable[str]) -> list[Path]:
    """The .ko files of ``wanted`` and all their dependencies, each after what it needs."""
    by_name = {_norm(p.name.removesuffix(".ko")): p for p in moddir.rglob("*.ko")}
    if not by_name:
        raise PrepareError(f"{moddir}: no kernel modules (compressed modules are not supported)")
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = _norm(name)
        if key in seen:
            return
        ko = by_name.get(key)
        if ko is None:
            raise PrepareError(f"module {name} (needed by {' <- '.join(chain) or 'the checks'}) not found")
        seen.add(key)
        for dep in module_depends(ko):
            visit(dep, (name, *chain))
        order.append(ko)

    for name in wanted:
        visit(name, ())
    return order


class Cpio:
    """A ``newc`` cpio archive, written without the cpio program (device nodes need no root)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        self.ino += 1
        head = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
        self.buf.write(head + name.encode() + b"\0")
        self.buf.write(b"\0" * (-self.buf.tell() % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build_initramfs(modules: list[Path]) -> bytes:
    archive = Cpio()
    for d in ("bin", "dev", "proc", "sys", "host", "lib", "lib/modules"):
        archive.dir(d)
    archive.chardev("dev/console", 5, 1)
    archive.chardev("dev/null", 1, 3)
    archive.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    archive.file("init", INIT.encode(), 0o755)
    names = []
    for ko in modules:
        name = ko.name.removesuffix(".ko")
        names.append(name)
        archive.file(f"lib/modules/{name}.ko", ko.read_bytes())
    archive.file("modules.order", ("\n".join(names) + "\n").encode())
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


def prepare(log: object = print) -> GuestImage:
    """The cached guest for the current package versions, built first when there is none."""
    say = log if callable(log) else print
    release = kernel_release()
    package = f"linux-image-{release}"
    version = package_version(package)
    bb = busybox_version()
    key = re.sub(r"[^A-Za-z0-9.+_-]", "_", f"{package}_{version}__busybox_{bb}__f{FORMAT}")
    where = CACHE / key
    image = GuestImage(where / "vmlinuz", where / "initramfs.gz", release, f"{package}={version}", bb)
    if (where / "manifest.json").is_file():
        return image
    say(f"building the guest in {where} from {package}={version} and busybox-static {bb}")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".build-") as tmp:
        work = Path(tmp)
        _run(["apt-get", "download", f"{package}={version}"], f"downloading {package}", cwd=work)
        (deb,) = work.glob("*.deb")
        _run(["dpkg-deb", "-x", str(deb), str(work / "root")], f"unpacking {deb.name}")
        moddir = work / "root" / "lib" / "modules" / release / "kernel"
        modules = resolve_modules(moddir, MODULES)
        staged = work / "image"
        staged.mkdir()
        shutil.copy(work / "root" / "boot" / f"vmlinuz-{release}", staged / "vmlinuz")
        (staged / "initramfs.gz").write_bytes(build_initramfs(modules))
        manifest = {
            "kernel_package": image.kernel_package,
            "kernel_release": release,
            "busybox_static": bb,
            "format": FORMAT,
            "modules": [m.name for m in modules],
        }
        (staged / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if where.exists():
            shutil.rmtree(where)
        staged.rename(where)
    return image
