"""The package build's pure parts, without building: version stamping, dependencies from ELF facts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "deb"))
import build_deb  # noqa: E402
import control  # noqa: E402
from elf import EM_AARCH64, ElfInfo  # noqa: E402


def info(name: str, needed: tuple[str, ...] = (), versions: tuple[str, ...] = (), soname: str | None = None) -> ElfInfo:
    return ElfInfo(Path("/x") / name, EM_AARCH64, needed, soname, versions, exec_stack=False)


def test_copy_source_stamps_the_version(tmp_path: Path) -> None:
    build_deb.copy_source(ROOT, tmp_path / "src", "7.8.9")
    assert '__version__ = "7.8.9"' in (tmp_path / "src" / "agent" / "__init__.py").read_text()
    assert '\nversion = "7.8.9"\n' in (tmp_path / "src" / "pyproject.toml").read_text()
    assert not list((tmp_path / "src").rglob("__pycache__"))
    assert not (tmp_path / "src" / "tests").exists()


def test_library_depends_bounds_libc_and_skips_shipped_libraries() -> None:
    elves = [info("a.so", ("libc.so.6", "libm.so.6", "libbundled.so"), ("GLIBC_2.17", "GLIBC_2.34", "GLIBC_2.4")),
             info("libbundled.so", ("libstdc++.so.6", "libgcc_s.so.1"), ("GLIBCXX_3.4.29",), soname="libbundled.so")]
    assert control.library_depends(elves) == ["libc6 (>= 2.34)", "libgcc-s1", "libstdc++6"]


def test_library_depends_refuses_an_unknown_library() -> None:
    with pytest.raises(control.ControlError, match="libfoo.so.3"):
        control.library_depends([info("a.so", ("libc.so.6", "libfoo.so.3"))])


@pytest.mark.parametrize("version", ["1.0~rc1", "1.0-1", "v1", "1.0 "])
def test_build_refuses_a_version_dpkg_and_pip_would_read_differently(version: str, tmp_path: Path) -> None:
    with pytest.raises(build_deb.BuildError, match="version"):
        build_deb.build(ROOT, tmp_path, version, tmp_path / "cache")
