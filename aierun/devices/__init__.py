"""The devices a Session runs on: `emu` (numpy, aierun/devices/emu.py) and `npu`
(XRT, aierun/devices/npu.py), both implementing aierun/devices/base.py. Choosing one
by name lives here, above the three, so none of them imports another's module."""

from __future__ import annotations

from aierun.devices.base import Device
from aierun.errors import UserError


def device_class(name: str) -> type[Device]:
    if name == "emu":
        from aierun.devices.emu import EmuDevice

        return EmuDevice
    if name in ("npu", "npu2"):
        from aierun.devices.npu import NpuDevice

        return NpuDevice
    raise UserError(f"unknown device {name!r}: choose emu (numpy emulation) or npu (XRT)")


def open_device(name: str) -> Device:
    return device_class(name)()


def device_targets(device: str) -> tuple[str, ...]:
    """The artifact targets a device runs, without opening it."""
    return device_class(device).targets
