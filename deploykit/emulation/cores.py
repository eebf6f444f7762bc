"""The ARM cores deploykit can emulate, what each computes with, and the ``/proc/cpuinfo`` it must see.

qemu 7.2 (Debian bookworm's) passes the host's x86 ``/proc/cpuinfo`` through to the guest; ONNX Runtime's
cpuinfo library then finds no ARM processor and crashes (SIGSEGV on import). The userland therefore gives each
core a view of the sysroot whose ``proc/cpuinfo`` describes that core, with the feature list read from the
HWCAP bits qemu itself hands the guest — a feature the file claims but the core lacks would end in SIGILL.
"""
from __future__ import annotations

from dataclasses import dataclass

from deploykit.errors import UsageError

DEFAULT_CORE = "cortex-a76"


@dataclass(frozen=True)
class Core:
    """An emulated ARM core: qemu's ``-cpu`` name and the identity its cpuinfo reports."""

    name: str
    arch: str               # the ISA level, for reports ("ARMv8.2-A")
    implementer: int        # MIDR fields, as /proc/cpuinfo prints them
    part: int
    variant: int
    revision: int
    phone: str              # where such a core is found
    fp16_arithmetic: bool   # native half-precision arithmetic (FEAT_FP16: the fphp/asimdhp HWCAPs)
    dotprod: bool           # SDOT/UDOT (int8 kernels)
    lse: bool               # ARMv8.1 atomics: LiteRT's CompiledModel needs them

    def describe(self) -> str:
        extras = [name for name, has in (("fp16 arithmetic", self.fp16_arithmetic), ("dotprod", self.dotprod))
                  if has]
        return f"{self.name} ({self.arch}{', ' + ', '.join(extras) if extras else ', no fp16 arithmetic'})"


# Only the named cores of qemu 7.2: its "max" core advertises SME and gave wrong int8 XNNPACK results
# (FIELD-NOTES, third round), and a core qemu lacks cannot be emulated however it is named.
CORES = {core.name: core for core in (
    Core("cortex-a76", "ARMv8.2-A", 0x41, 0xD0B, 4, 1, "Snapdragon 855/865, Kirin 980, Dimensity 1000 big cores",
         True, True, True),
    Core("neoverse-n1", "ARMv8.2-A", 0x41, 0xD0C, 3, 1, "AWS Graviton2, Ampere Altra (the A76's server sibling)",
         True, True, True),
    Core("cortex-a53", "ARMv8.0-A", 0x41, 0xD03, 0, 4, "budget phones, Raspberry Pi 3, little cores of 2015-2018",
         False, False, False),
    Core("cortex-a72", "ARMv8.0-A", 0x41, 0xD08, 0, 3, "Raspberry Pi 4, big cores of 2016-2017",
         False, False, False),
    Core("cortex-a57", "ARMv8.0-A", 0x41, 0xD07, 1, 1, "Snapdragon 810, Jetson TX1/Nano", False, False, False),
    Core("cortex-a35", "ARMv8.0-A", 0x41, 0xD04, 0, 2, "low-power little cores, wearables", False, False, False),
    Core("a64fx", "ARMv8.2-A+SVE", 0x46, 0x001, 1, 0, "Fujitsu A64FX (SVE; a server core, not a phone's)",
         True, False, True),
)}

# Names people reach for that qemu 7.2 does not emulate, and the nearest core it does.
NEAREST = {"cortex-a55": "cortex-a53", "cortex-a75": "cortex-a76", "cortex-a77": "cortex-a76",
           "cortex-a78": "cortex-a76", "cortex-x1": "cortex-a76", "cortex-a73": "cortex-a72", "max": "cortex-a76"}

# Linux's arm64 HWCAP / HWCAP2 bit order (arch/arm64/include/uapi/asm/hwcap.h), as /proc/cpuinfo names them.
HWCAP_NAMES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
               "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2_NAMES = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
                "svebf16 i8mm bf16 dgh rng bti mte").split()


def core(name: str) -> Core:
    """The core called ``name`` (UsageError, exit 2, naming the choices and the nearest one, otherwise)."""
    key = (name or "").strip().lower()
    if key in CORES:
        return CORES[key]
    hint = f"the nearest qemu emulates is {NEAREST[key]}; " if key in NEAREST else ""
    why = " (qemu's max core gives wrong int8 results)" if key == "max" else ""
    raise UsageError(f"unknown --arm-cpu {name!r}{why}", f"{hint}use one of {', '.join(CORES)}")


def features(hwcap: int, hwcap2: int) -> list:
    """The cpuinfo feature names of the HWCAP bits set."""
    return ([n for bit, n in enumerate(HWCAP_NAMES) if hwcap >> bit & 1]
            + [n for bit, n in enumerate(HWCAP2_NAMES) if hwcap2 >> bit & 1])


def cpuinfo(cpu: Core, feature_names: list, processors: int) -> str:
    """The text of ``/proc/cpuinfo`` for ``processors`` cores of kind ``cpu`` (the kernel's own format)."""
    block = (f"BogoMIPS\t: 50.00\nFeatures\t: {' '.join(feature_names)}\nCPU implementer\t: 0x{cpu.implementer:02x}\n"
             f"CPU architecture: 8\nCPU variant\t: 0x{cpu.variant:x}\nCPU part\t: 0x{cpu.part:03x}\n"
             f"CPU revision\t: {cpu.revision}\n\n")
    return "".join(f"processor\t: {index}\n{block}" for index in range(processors))
