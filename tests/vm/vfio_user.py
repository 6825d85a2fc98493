"""Stand in for a guest that uses a VFIO group: what QEMU does with an assigned device.

Opens ``/dev/vfio/vfio`` and ``/dev/vfio/<group>``, attaches the group to the container and
sets the type1 IOMMU: the kernel then gives the group's DMA to this process, and no host driver
may bind a member. With ``--device ADDR`` it also opens the device, as a running guest has it
open. Standard library only::

    python tests/vm/vfio_user.py GROUP [--device ADDR]

It prints one JSON line, then answers each ``status`` line on stdin with one more, and lets
go when stdin closes.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import struct
import sys

_VFIO = ord(";") << 8
VFIO_GET_API_VERSION = _VFIO | 100
VFIO_SET_IOMMU = _VFIO | 102
VFIO_GROUP_GET_STATUS = _VFIO | 103
VFIO_GROUP_SET_CONTAINER = _VFIO | 104
VFIO_GROUP_GET_DEVICE_FD = _VFIO | 106
VFIO_TYPE1V2_IOMMU = 3
GROUP_VIABLE, GROUP_CONTAINER_SET = 1, 2


def group_status(group_fd: int) -> dict[str, object]:
    buf = bytearray(struct.pack("II", 8, 0))
    try:
        fcntl.ioctl(group_fd, VFIO_GROUP_GET_STATUS, buf, True)
    except OSError as exc:
        return {"status_error": os.strerror(exc.errno or 0)}
    flags = struct.unpack("II", buf)[1]
    return {"viable": bool(flags & GROUP_VIABLE), "container_set": bool(flags & GROUP_CONTAINER_SET)}


def open_device(group_fd: int, address: str) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.ioctl(group_fd, VFIO_GROUP_GET_DEVICE_FD, ctypes.c_char_p(address.encode())))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("group", type=int)
    parser.add_argument("--device")
    args = parser.parse_args()
    result: dict[str, object] = {"group": args.group}
    fd = -1
    try:
        container = os.open("/dev/vfio/vfio", os.O_RDWR)
        result["api_version"] = fcntl.ioctl(container, VFIO_GET_API_VERSION)
        fd = os.open(f"/dev/vfio/{args.group}", os.O_RDWR)
        result.update(group_status(fd))
        fcntl.ioctl(fd, VFIO_GROUP_SET_CONTAINER, struct.pack("i", container))
        fcntl.ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU)
        result.update(group_status(fd))
        if args.device:
            result["device_fd"] = open_device(fd, args.device)
        result["held"] = True
    except OSError as exc:
        result["held"] = False
        result["error"] = f"{exc.strerror} ({exc.errno})"
    print(json.dumps(result), flush=True)
    if not result["held"]:
        return
    for line in sys.stdin:  # until the caller closes our stdin (or kills us)
        if line.strip() == "status":
            print(json.dumps(group_status(fd)), flush=True)


if __name__ == "__main__":
    main()
