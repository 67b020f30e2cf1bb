"""ELF facts the package build checks: architecture from the header, needed libraries and versions.

The header is read directly (e_machine at offset 18); the dynamic section and the version needs
come from binutils' ``readelf``, which reads any architecture's ELF files on any host.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

ELF_MAGIC = b"\x7fELF"
EM_AARCH64 = 183
EM_X86_64 = 62


class ElfError(RuntimeError):
    """A file is not what the package needs (wrong architecture, unreadable dynamic section)."""


@dataclass(frozen=True)
class ElfInfo:
    path: Path
    machine: int
    needed: tuple[str, ...]          # DT_NEEDED sonames
    soname: str | None               # DT_SONAME, if any
    versions: tuple[str, ...]        # version needs, e.g. GLIBC_2.34
    exec_stack: bool                 # PT_GNU_STACK with X, or no PT_GNU_STACK: MemoryDenyWriteExecute breaks it


def machine(path: Path) -> int | None:
    """e_machine of an ELF file (little-endian ELF64/32 as on arm64 and x86_64), or None if not ELF."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != ELF_MAGIC:
        return None
    order = "little" if head[5] == 1 else "big"
    return int.from_bytes(head[18:20], order)


def inspect(path: Path) -> ElfInfo:
    """Everything above for one ELF file; raises ElfError if readelf cannot read it."""
    m = machine(path)
    if m is None:
        raise ElfError(f"{path}: not an ELF file")
    res = subprocess.run(["readelf", "-dlVW", str(path)], capture_output=True, text=True)
    if res.returncode:
        raise ElfError(f"{path}: readelf failed: {res.stderr.strip()}")
    out = res.stdout
    needed = tuple(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out))
    soname = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", out)
    stack = re.search(r"^\s*GNU_STACK\s+(?:\S+\s+){5}(\S+)", out, re.M)
    versions = tuple(sorted(set(re.findall(r"Name: ((?:GLIBC|GLIBCXX|GCC|CXXABI)_[0-9.]+)", out))))
    return ElfInfo(path, m, needed, soname.group(1) if soname else None, versions,
                   exec_stack=stack is None or "E" in stack.group(1))


def elf_files(root: Path) -> list[Path]:
    """Every regular ELF file under root (shared objects and executables)."""
    found = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and machine(p) is not None:
            found.append(p)
    return found


def version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("_", 1)[1].split(".") if x.isdigit())
