"""The boundary is a file: import rules between the worlds and the one door per heavy dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    """Absolute module names imported by a file (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return names


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _files("tee_sim"), ids=lambda p: str(p.relative_to(ROOT)))
def test_secure_world_never_imports_the_normal_world(path):
    assert not any(n == "agent" or n.startswith("agent.") for n in _imports(path))


@pytest.mark.parametrize("path", _files("agent"), ids=lambda p: str(p.relative_to(ROOT)))
def test_normal_world_imports_only_the_abi_from_the_secure_world(path):
    bad = [n for n in _imports(path) if n.startswith("tee_sim") and not n.startswith("tee_sim.abi")]
    assert not bad, f"{path} imports {bad}"


PURE = _files("tee_sim/abi") + [ROOT / "agent" / "store" / n for n in ("cid.py", "dagpb.py", "car.py")] + [
    ROOT / "agent" / "ingest" / "frames.py"] + [
    ROOT / "agent" / p for p in ("identity/eip712.py", "identity/mint.py", "incentive/allocation.py",
                                 "incentive/statement.py", "utility/report.py")]


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_cores_do_no_io(path):
    io = {"socket", "serial", "asyncio", "subprocess", "threading", "os", "io"}
    assert not {n.split(".")[0] for n in _imports(path)} & io


DOORS = {
    "coincurve": {"tee_sim/keys.py", "agent/signature.py", "agent/node/identity.py"},
    # CoAP: the device's link and OSCORE contexts; the node's resources and server
    "aiocoap": {"agent/uplink/link.py", "agent/uplink/oscore_ctx.py", "agent/node/resources.py",
                "agent/node/server.py", "agent/node/block1.py"},
    "serial": {"tee_sim/server.py", "tee_sim/log.py", "tee_sim/__main__.py", "agent/tee/client.py",
              "agent/ingest/reader.py"},
    "Crypto": {"tee_sim/abi/digests.py"},
    "ai_edge_litert": {"agent/train/runtime.py"},
    "tflite_runtime": {"agent/train/runtime.py"},
}


@pytest.mark.parametrize("dep", sorted(DOORS))
def test_one_door_per_heavy_dependency(dep):
    users = {str(p.relative_to(ROOT)) for pkg in ("agent", "tee_sim") for p in _files(pkg)
             if any(n == dep or n.startswith(dep + ".") for n in _imports(p))}
    assert users <= DOORS[dep], f"{dep} imported outside its doors: {sorted(users - DOORS[dep])}"
