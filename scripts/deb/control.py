"""The package's metadata: control fields, dependencies from the ELF files, copyright, changelog, md5sums.

Pure functions of what is staged: given the same tree, version and date they return the same bytes.
"""

from __future__ import annotations

import email.parser
import gzip
import hashlib
import io
import time
from pathlib import Path

from elf import ElfInfo, version_key

PACKAGE = "aitn-agent"
ARCH = "arm64"
DEFAULT_MAINTAINER = "aitn-agent maintainers <aitn-agent@lists.invalid>"

#: Where each shared library the wheels link against comes from on Debian bookworm / Raspberry Pi OS.
#: A soname neither listed here nor shipped in the package stops the build: add it here, with its package.
SONAME_PACKAGES = {
    "libc.so.6": "libc6", "libm.so.6": "libc6", "libpthread.so.0": "libc6", "libdl.so.2": "libc6",
    "librt.so.1": "libc6", "libutil.so.1": "libc6", "ld-linux-aarch64.so.1": "libc6",
    "libgcc_s.so.1": "libgcc-s1", "libstdc++.so.6": "libstdc++6", "libz.so.1": "zlib1g",
}
#: Not libraries: what the maintainer scripts and the venv use. python3.11 is the interpreter the
#: venv's bin/python3 points at (/usr/bin/python3.11) with its standard library; adduser creates
#: the two users.
BASE_DEPENDS = ["python3.11", "adduser"]


class ControlError(RuntimeError):
    """The staged tree needs something the package cannot declare (an unknown library)."""


def library_depends(elves: list[ElfInfo]) -> list[str]:
    """Depends for the libraries the ELF files need and the package does not ship.

    libc6 gets a lower bound: the highest GLIBC_x.y symbol version any file needs.
    Raises ControlError naming the first unknown soname and a file that needs it.
    """
    shipped = {e.path.name for e in elves} | {e.soname for e in elves if e.soname}
    packages: dict[str, str] = {}
    for e in elves:
        for soname in e.needed:
            if soname in shipped:
                continue
            pkg = SONAME_PACKAGES.get(soname)
            if pkg is None:
                raise ControlError(f"{e.path}: needs {soname}, which neither the package nor SONAME_PACKAGES has")
            packages[pkg] = ""
    glibc = [v for e in elves for v in e.versions if v.startswith("GLIBC_")]
    if glibc and "libc6" in packages:
        packages["libc6"] = f" (>= {max(glibc, key=version_key).split('_', 1)[1]})"
    return [f"{p}{bound}" for p, bound in sorted(packages.items())]


def control(version: str, depends: list[str], installed_kib: int, maintainer: str) -> str:
    fields = {
        "Package": PACKAGE,
        "Version": version,
        "Architecture": ARCH,
        "Maintainer": maintainer,
        "Installed-Size": str(installed_kib),
        "Depends": ", ".join(depends),
        "Recommends": "systemd",
        "Section": "misc",
        "Priority": "optional",
        "Description": "firmware-side agent of a Raspberry Pi-class robot in a decentralized AI network\n"
                       " The robot's secure world (an emulated OP-TEE trusted application holding the\n"
                       " device key) and its normal world (sensor ingest, desensitization,\n"
                       " content-addressed storage, LiteRT training, the signed CoAP/OSCORE uplink and\n"
                       " the node role), each as a hardened systemd service under its own user.\n"
                       " .\n"
                       " Self-contained: a Python 3.11 virtual environment under /opt/aitn-agent with\n"
                       " every dependency (aarch64 wheels) included; nothing is downloaded at install\n"
                       " time. Upgrades keep the previous release and roll back to it when the new\n"
                       " services do not come up.",
    }
    return "".join(f"{k}: {v}\n" for k, v in fields.items())


def installed_size_kib(root: Path) -> int:
    """As dpkg-gencontrol counts it: each file and symlink rounded up to KiB, directories 1 KiB each."""
    total = 0
    for p in root.rglob("*"):
        if p.is_symlink() or p.is_dir():
            total += 1
        else:
            total += (p.stat().st_size + 1023) // 1024
    return total


def md5sums(root: Path) -> str:
    lines = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            lines.append(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(root)}\n")
    return "".join(lines)


def conffiles(root: Path) -> str:
    return "".join(f"/{p.relative_to(root)}\n" for p in sorted((root / "etc").rglob("*")) if p.is_file())


def _license_of(dist_info: Path) -> str:
    meta = email.parser.Parser().parsestr((dist_info / "METADATA").read_text(errors="replace"), headersonly=True)
    expr = meta.get("License-Expression")
    if expr:
        return expr.replace(" OR ", " or ").replace(" AND ", " and ").replace(" WITH ", " with ")
    short = (meta.get("License") or "").strip()
    if short and "\n" not in short and len(short) < 60:
        return short.replace(" ", "-")
    for c in meta.get_all("Classifier") or []:
        if c.startswith("License :: OSI Approved :: "):
            return c.rsplit(" :: ", 1)[1].replace(" License", "").replace(" ", "-")
    return "see-dist-info"


def copyright_text(site: Path, site_in_package: str) -> str:
    """DEP-5 copyright: the project (Apache-2.0) and each bundled distribution with its license.

    The bundled distributions' own license files stay in their ``*.dist-info`` directories.
    """
    parts = ["Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
             f"Upstream-Name: {PACKAGE}\n"
             "Comment: A binary package built from the aitn-agent source tree with aarch64 wheels of\n"
             f" its dependencies from PyPI, unpacked under {site_in_package}. Each\n"
             " bundled distribution's license texts are in its *.dist-info directory there.\n",
             "Files: *\nCopyright: aitn-agent developers\nLicense: Apache-2.0\n"]
    licenses = {"Apache-2.0"}
    for info in sorted(site.glob("*.dist-info")):
        name, version = info.name[: -len(".dist-info")].rsplit("-", 1)
        if name == "aitn_agent":
            continue
        lic = _license_of(info)
        licenses.add(lic)
        parts.append(f"Files: {site_in_package}/{info.name}/* (and the modules of {name} {version})\n"
                     f"Copyright: the {name} authors (see {info.name})\nLicense: {lic}\n")
    for lic in sorted(licenses):
        if lic == "Apache-2.0":
            parts.append("License: Apache-2.0\n On Debian systems, the full text of the Apache License, Version 2.0,\n"
                         " is in /usr/share/common-licenses/Apache-2.0.\n")
        else:
            parts.append(f"License: {lic}\n The full text is in the *.dist-info directory of each distribution\n"
                         " above that carries this license.\n")
    return "\n".join(parts)


def changelog_gz(version: str, when: int, maintainer: str, note: str) -> bytes:
    """A native package's Debian changelog, gzip -9n (no name, no timestamp in the header)."""
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when))
    text = (f"{PACKAGE} ({version}) stable; urgency=medium\n\n  * {note}\n\n -- {maintainer}  {date}\n")
    return gzip_bytes(text.encode())


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(data)
    return buf.getvalue()
