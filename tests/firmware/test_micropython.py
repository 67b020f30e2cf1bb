"""firmware/sensor_mcu: its frames, made by real MicroPython, are the agent's frames; it type-checks for the RP2040.

(a) framing.py runs under MicroPython 1.27 (the npm package @micropython/micropython-webassembly-pyscript,
    driven by run_mpy.mjs); the frames it prints are decoded by agent.ingest.frames.FrameDecoder field by
    field and must equal CPython's encode_record byte for byte. Its CRC-32 (native and table) must equal
    zlib.crc32 there too. Skipped only when node or npm is missing.
(b) mypy checks firmware/sensor_mcu/*.py against micropython-rp2-rpi-pico-stubs (machine, time, ... as on a
    Pico), with the stubs' own stdlib as typeshed. The stubs are pip-installed into build/mpy-typecheck/
    (a directory of their own: mypy accepts them only there, not from site-packages); mypy comes from the
    environment, else from the same place. Skipped, saying why, when neither can be had.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import random
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from agent.ingest.frames import (LAYOUTS, MAX_PAYLOAD, VERSION, Frame, FrameDecoder, RecordType, cobs_encode,
                                 encode_record)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FW = ROOT / "firmware" / "sensor_mcu"
MPY_PACKAGE = HERE / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
TYPECHECK = ROOT / "build" / "mpy-typecheck"
STUBS_REQ = "micropython-rp2-rpi-pico-stubs==1.27.0.post1"   # MicroPython 1.27, as the wasm port
MYPY_REQ = "mypy==1.19.1"

#: The fixed records both interpreters encode: every type, seq edges, COBS full blocks, zeros in text.
RECORDS: list[tuple[RecordType, int, dict]] = [
    (RecordType.POSE, 0, {"t_ms": 0, "x_mm": -2_147_483_648, "y_mm": 2_147_483_647, "heading_cdeg": 18000}),
    (RecordType.GPS, 1, {"t_ms": 4_294_967_295, "lat_e7": 483_584_370, "lon_e7": -1_234_567_890}),
    (RecordType.IMU, 2, {"t_ms": 20, "ax": -19613, "ay": 0, "az": 9806, "gx": 250_000, "gy": -1, "gz": 7}),
    (RecordType.MOTORS, 3, {"t_ms": 40, "currents_ma": [1200, -350, 0, 32767, -32768]}),
    (RecordType.MOTORS, 4, {"t_ms": 41, "currents_ma": []}),
    (RecordType.BATTERY, 5, {"t_ms": 1000, "mv": 7400, "soc_pct": 55, "temp_dc": -105}),
    (RecordType.TASK_EVENT, 6, {"t_ms": 1001, "task_id": 0xDEADBEEF, "event": 255}),
    (RecordType.NOTE, 7, {"t_ms": 1002, "text": "pelouse mouillée — zone B ✓"}),
    (RecordType.NOTE, 8, {"t_ms": 1003, "text": "a\x00b" + "x" * 300}),
    (RecordType.NOTE, 9, {"t_ms": 1004, "text": "é" * ((MAX_PAYLOAD - 4) // 2)}),
    (RecordType.FAULT, 0xFFFFFFFF, {"t_ms": 1005, "code": 1}),
    (RecordType.OPERATOR, 0, {"t_ms": 1006, "badge": "04:A2:19:7C:3B:5D:80"}),
]


def _values(rtype: RecordType, fields: dict) -> tuple:
    """The firmware's argument: the layout's values in order, the tail (list or text) last."""
    layout = LAYOUTS[rtype]
    tail = (fields[layout.tail_field],) if layout.tail_field else ()
    return tuple(fields[name] for name in layout.fields) + tail


def _load_framing():
    spec = importlib.util.spec_from_file_location("sensor_mcu_framing", FW / "framing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- framing.py under CPython: the mirror matches the definition -------------------------------------

def test_framing_imports_only_what_both_interpreters_have():
    tree = ast.parse((FW / "framing.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"struct", "binascii"}


def test_framing_mirrors_the_agent_s_layouts():
    fw = _load_framing()
    assert (fw.VERSION, fw.MAX_PAYLOAD) == (VERSION, MAX_PAYLOAD)
    assert {t.name: getattr(fw, t.name) for t in RecordType} == {t.name: int(t) for t in RecordType}
    assert fw.LAYOUTS == {int(t): (layout.fmt, layout.tail) for t, layout in LAYOUTS.items()}


def test_framing_under_cpython_matches_the_agent():
    fw = _load_framing()
    rng = random.Random(1)
    for n in [0, 1, 253, 254, 255, 508, 509, 1000]:
        data = bytes(rng.choice([0, 1, 255, rng.randrange(256)]) for _ in range(n))
        assert fw.crc32_table(data) == zlib.crc32(data) == fw.crc32(data)
        assert fw.cobs_encode(data) == cobs_encode(data)
    for rtype, seq, fields in RECORDS:
        assert fw.encode_record(int(rtype), seq, _values(rtype, fields)) == encode_record(rtype, seq, fields)


# -- (a) framing.py under real MicroPython -----------------------------------------------------------

@pytest.fixture(scope="module")
def micropython():
    """A function running framing.py then a program under MicroPython; returns its stdout lines."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        pytest.skip("node and npm are needed to run MicroPython's WebAssembly port (not found on PATH)")
    if not MPY_PACKAGE.exists():
        r = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, f"npm ci failed in {HERE}:\n{r.stderr}"

    def run(program: str) -> list[str]:
        r = subprocess.run([node, "run_mpy.mjs", str(FW / "framing.py")], input=program, cwd=HERE,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"MicroPython failed:\n{r.stderr}"
        return r.stdout.splitlines()

    return run


def test_micropython_frames_decode_to_every_field_and_equal_cpython_s(micropython):
    program = "\n".join([
        f"RECORDS = {[(int(t), s, _values(t, f)) for t, s, f in RECORDS]!r}",
        "import sys",
        "print(sys.implementation.name, sys.implementation.version[:2])",
        "for rtype, seq, values in RECORDS:",
        "    print(encode_record(rtype, seq, values).hex())",
    ])
    header, *lines = micropython(program)
    assert header == "micropython (1, 27)"
    assert len(lines) == len(RECORDS)
    stream = b"".join(bytes.fromhex(line) for line in lines)
    decoder = FrameDecoder()
    got = [e for e in decoder.feed(stream) if isinstance(e, Frame)]
    assert [(f.record_type, f.seq, f.fields) for f in got] == [(t, s, f) for t, s, f in RECORDS]
    assert decoder.counters.corrupt == {} and decoder.counters.frames == len(RECORDS)
    for line, (rtype, seq, fields) in zip(lines, RECORDS):
        assert bytes.fromhex(line) == encode_record(rtype, seq, fields), rtype.name


def test_micropython_crc32_equals_zlib(micropython):
    rng = random.Random(2)
    vectors = [b"", b"123456789", bytes(range(256)), bytes(rng.randrange(256) for _ in range(1500))]
    program = "\n".join([
        f"VECTORS = {[v.hex() for v in vectors]!r}",
        "print(_native_crc32 is not None)",
        "for h in VECTORS:",
        "    data = bytes.fromhex(h)",
        "    print(crc32_table(data), crc32(data))",
    ])
    native, *lines = micropython(program)
    assert native == "True"    # the wasm port has binascii.crc32; both paths are checked below
    assert lines == [f"{zlib.crc32(v)} {zlib.crc32(v)}" for v in vectors]


def test_micropython_rejects_a_bad_tail(micropython):
    with pytest.raises(AssertionError, match="ValueError: type 7 ends with a str"):
        micropython("encode_record(NOTE, 1, (0, 42))")


# -- (b) mypy against the RP2040 stubs ---------------------------------------------------------------

def _pip_target(requirement: str, target: Path) -> None:
    """pip install `requirement` into `target` once (a marker names what is there)."""
    marker = target / ".installed"
    if marker.exists() and marker.read_text() == requirement:
        return
    shutil.rmtree(target, ignore_errors=True)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "--target", str(target), requirement], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"cannot install {requirement} into {target}: {r.stderr.strip().splitlines()[-1:]}")
    marker.write_text(requirement)


@pytest.fixture(scope="module")
def mypy_env() -> dict:
    stubs = TYPECHECK / "stubs"
    _pip_target(STUBS_REQ, stubs)
    if not (stubs / "machine.pyi").exists() or not (stubs / "stdlib" / "VERSIONS").exists():
        pytest.skip(f"{STUBS_REQ} in {stubs} lacks machine.pyi or stdlib/VERSIONS")
    env = dict(os.environ, MYPYPATH=str(stubs))
    if importlib.util.find_spec("mypy") is None:
        _pip_target(MYPY_REQ, TYPECHECK / "tools")
        env["PYTHONPATH"] = str(TYPECHECK / "tools")
    config = TYPECHECK / "mypy.ini"
    # Strict on the firmware; the stubs' own files are not ours to fix (they have a few errors).
    config.write_text("[mypy]\npython_version = 3.11\nstrict = True\nignore_errors = True\n"
                      "[mypy-framing,sensors,main]\nignore_errors = False\n")
    return env


def _mypy(env: dict, files: list[Path]) -> subprocess.CompletedProcess:
    stubs = TYPECHECK / "stubs"
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(TYPECHECK / "mypy.ini"), "--custom-typeshed-dir",
         str(stubs), "--no-site-packages", "--cache-dir", str(TYPECHECK / "cache"), *map(str, files)],
        env=env, capture_output=True, text=True, timeout=600)


def test_firmware_type_checks_against_the_rp2_stubs(mypy_env):
    r = _mypy(mypy_env, sorted(FW.glob("*.py")))
    assert r.returncode == 0 and "Success: no issues found in 3 source files" in r.stdout, r.stdout + r.stderr


def test_type_check_catches_cpython_only_calls(mypy_env, tmp_path):
    for path in FW.glob("*.py"):
        shutil.copy(path, tmp_path / path.name)
    main = tmp_path / "main.py"
    main.write_text(main.read_text().replace("time.sleep_ms(wait)", "time.sleep(wait / 1000); time.monotonic()"))
    r = _mypy(mypy_env, sorted(tmp_path.glob("*.py")))
    assert r.returncode == 1 and 'Module has no attribute "monotonic"' in r.stdout, r.stdout + r.stderr
