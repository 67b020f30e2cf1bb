"""The node against libcoap's command-line client (`coap-client-notls`), a CoAP stack nobody here wrote.

A real `aitn node serve` process is driven only through coap-client; what it prints is checked
against the node's own word (its /status JSON, fetched with coap-client too, and its models folder):

- GET /.well-known/core: the CoRE link format (RFC 6690) lists every resource, /round marked ``obs``
  (parsed, not compared as a string).
- GET /round: the CBOR payload (written with ``-o``) follows the round schema and matches /status.
- GET /model block-wise (RFC 7959) with 64- and 256-byte blocks forced by ``-b`` and with the server's
  default size: the file's sha256 is the round's ``hash`` and its size the model's; the ``-v 7`` message
  trace shows every Block2 number 0..n-1 exactly at the requested size, so it really went in many blocks.
- Observe (RFC 7641): ``-s SECONDS`` subscribes to /round on a node whose empty round's deadline moves
  on every 2 s (Rounds.tick notifies the observers). With ``-o FILE`` coap-client appends every
  payload it receives -- the first response and each notification -- to the same file, so the file is
  a CBOR sequence (RFC 8742): decoded item by item it must hold more than one round message with
  strictly increasing deadlines and an unchanged round id and hash. The ``-v 7`` trace is cross-checked:
  as many 2.05 responses carrying an Observe option as payloads in the file, with increasing Observe
  numbers, and the client's deregistration (a GET with Observe: 1) at the end.
- POST of a signed update item to /update in the clear (no OSCORE): coap-client prints the error
  code and the diagnostic on stderr, "4.01 OSCORE required: ...". libcoap 4.3.1's client exits 0 even
  on a 4.xx answer, so the test reads the printed code, not the exit status.

Skipped only when coap-client-notls is not on PATH (Debian: libcoap3-bin).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import cbor2
import numpy as np
import pytest

from agent.train import weights as weights_codec
from agent.uplink import messages
from tests.support.node_process import NodeProcess
from tests.support.soft_device import SoftDevice, update_payload

COAP_CLIENT = shutil.which("coap-client-notls")
pytestmark = pytest.mark.skipif(COAP_CLIENT is None,
                                reason="coap-client-notls (libcoap3-bin) is needed for the libcoap interop tests")

ROUND_SECONDS = 2.0
# one traced message line of coap-client -v 7, e.g.
# v:1 t:ACK c:2.05 i:354e {02000000000002} [ Content-Format:application/octet-stream, Block2:1/M/64 ] :: ...
_MSG = re.compile(r"^v:1 t:(?P<type>\w+) c:(?P<code>[\w.]+) i:(?P<mid>[0-9a-f]+) \{(?P<token>[0-9a-f]*)\} "
                  r"\[(?P<options>[^\]]*)\]", re.M)


def coap(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run coap-client-notls; its stdout/stderr as bytes (CBOR and the -v trace are not always text)."""
    done = subprocess.run([COAP_CLIENT, *args], capture_output=True, timeout=timeout)
    assert done.returncode == 0, f"coap-client {args} exited {done.returncode}: {done.stderr!r}"
    return done


def trace(out: bytes) -> list[dict]:
    """The CoAP messages of a -v 7 trace: type, code, token and options (name -> value text)."""
    msgs = []
    for m in _MSG.finditer(out.decode("latin-1")):
        options = {}
        for opt in m["options"].split(","):
            name, _, value = opt.strip().partition(":")
            if name:
                options[name] = value
        msgs.append({"type": m["type"], "code": m["code"], "token": m["token"], "options": options})
    return msgs


def parse_link_format(text: str) -> dict[str, dict[str, str | bool]]:
    """RFC 6690 link format -> {target: {param: value, or True for a bare flag like obs}}."""
    links: dict[str, dict[str, str | bool]] = {}
    # links are separated by commas outside quotes and angle brackets
    parts, cur, quoted, angled = [], "", False, False
    for ch in text:
        if ch == '"' and not angled:
            quoted = not quoted
        elif ch == "<" and not quoted:
            angled = True
        elif ch == ">" and not quoted:
            angled = False
        if ch == "," and not quoted and not angled:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for part in parts:
        m = re.fullmatch(r"\s*<([^>]*)>(.*)", part, re.S)
        assert m, f"not a link: {part!r}"
        params: dict[str, str | bool] = {}
        for p in re.findall(r';\s*([^;=]+?)(?:=("[^"]*"|[^;]*))?(?=;|$)', m[2]):
            name, value = p[0].strip(), p[1]
            params[name] = value.strip('"') if value else True
        links[m[1]] = params
    return links


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A node whose round does not move during the tests (exact comparisons)."""
    n = NodeProcess(tmp_path_factory.mktemp("libcoap") / "node").start()
    yield n
    n.stop()


@pytest.fixture(scope="module")
def ticking(tmp_path_factory):
    """A node whose empty round's deadline moves on every ROUND_SECONDS (observers are notified)."""
    n = NodeProcess(tmp_path_factory.mktemp("libcoap-tick") / "node", min_updates=1000,
                    round_seconds=ROUND_SECONDS).start()
    yield n
    n.stop()


def _status(node: NodeProcess) -> dict:
    return json.loads(coap("-m", "get", f"{node.uri}/status").stdout)


def _round(node: NodeProcess, tmp_path: Path) -> dict:
    out = tmp_path / "round.cbor"
    coap("-m", "get", "-o", str(out), f"{node.uri}/round")
    return messages.decode("round", out.read_bytes())


def test_well_known_core_lists_the_resources(node):
    text = coap("-m", "get", f"{node.uri}/.well-known/core").stdout.decode().strip()
    links = parse_link_format(text)
    for path in ("/round", "/model", "/update", "/manifest", "/report", "/status", "/enroll"):
        assert path in links, f"{path} missing from {text!r}"
        assert links[path].get("rt") == f"aitn.{path[1:]}"
    assert links["/round"].get("obs") is True
    assert not any(p.get("obs") for target, p in links.items() if target != "/round")


def test_round_is_cbor_and_agrees_with_status(node, tmp_path):
    r = _round(node, tmp_path)
    s = _status(node)
    assert s["node"] == "0x" + node.address.hex()
    sr = s["round"]
    assert r["round"] == sr["id"] == 1
    assert r["hash"].hex() == sr["hash"]
    assert (r["model"], r["width"], r["min"], r["accepted"]) == (sr["model"], sr["width"], sr["min_updates"],
                                                                 sr["updates"]) == ("activity", 1.0, 1000, 0)
    assert r["deadline"] == sr["deadline"]           # the round does not move: the same float, exactly
    assert sr["deadline"] > time.time() + 3000
    assert (node.folder / "models" / f"{sr['hash']}.aitw").is_file()


@pytest.mark.parametrize("block", [64, 256, None], ids=["b64", "b256", "default"])
def test_model_blockwise(node, tmp_path, block):
    r = _round(node, tmp_path)
    served = (node.folder / "models" / f"{r['hash'].hex()}.aitw").read_bytes()
    out = tmp_path / "model.aitw"
    args = ["-v", "7", "-m", "get", "-o", str(out)] + (["-b", str(block)] if block else [])
    done = coap(*args, f"{node.uri}/model")
    data = out.read_bytes()
    assert len(data) == len(served) > 4096
    assert hashlib.sha256(data).digest() == r["hash"]
    weights_codec.decode(data)                      # a well-formed AITW file
    # the trace: one 2.05 per block, numbered 0..n-1, of the size asked for (aiocoap's default: 1024)
    size = block or 1024
    blocks: dict[int, tuple[str, int]] = {}
    for m in trace(done.stdout):
        if m["code"] == "2.05":
            num, more, szx = m["options"]["Block2"].split("/")
            blocks[int(num)] = (more, int(szx))     # the last block is printed twice (the reassembled body)
    n = math.ceil(len(served) / size)
    assert sorted(blocks) == list(range(n)) and n > 1
    assert all(sz == size for _, sz in blocks.values())
    assert [more for _, (more, _) in sorted(blocks.items())] == ["M"] * (n - 1) + ["_"]


def test_observe_round_notifications(ticking, tmp_path):
    out = tmp_path / "observed.cbor"
    seconds = 3 * ROUND_SECONDS + 1
    t0 = time.time()
    done = coap("-v", "7", "-s", str(int(seconds)), "-m", "get", "-o", str(out), f"{ticking.uri}/round",
                timeout=seconds + 20)
    # the -o file is the CBOR sequence of every payload received
    raw = out.read_bytes()
    decoder = cbor2.CBORDecoder(io.BytesIO(raw))
    seen = []
    while decoder.fp.tell() < len(raw):
        seen.append(decoder.decode())
    for r in seen:
        messages.check("round", r)
    assert len(seen) >= 3, seen                     # the first answer and at least two notifications
    assert {(r["round"], r["hash"]) for r in seen} == {(seen[0]["round"], seen[0]["hash"])}
    deadlines = [r["deadline"] for r in seen]
    assert deadlines == sorted(set(deadlines)), deadlines
    assert deadlines[-1] - deadlines[0] >= ROUND_SECONDS * (len(seen) - 1)
    assert t0 - 5 < deadlines[0] < t0 + ROUND_SECONDS + 5
    # cross-check with the message trace: one Observe-carrying 2.05 per payload, numbers increasing
    msgs = trace(done.stdout)
    notes = [m for m in msgs if m["code"] == "2.05" and "Observe" in m["options"]]
    assert len(notes) == len(seen)
    numbers = [int(m["options"]["Observe"]) for m in notes]
    assert numbers == sorted(set(numbers))
    assert all(m["options"].get("Content-Format") == "application/cbor" for m in notes)
    # the request registered (Observe: 0) and, at the end, deregistered (Observe: 1)
    gets = [m["options"].get("Observe") for m in msgs if m["code"] == "GET"]
    assert gets[0] == "0" and gets[-1] == "1"


def test_unprotected_update_is_401(node, tmp_path):
    r = _round(node, tmp_path)
    model = tmp_path / "model.aitw"
    coap("-m", "get", "-o", str(model), f"{node.uri}/model")
    shapes = [w.shape for w in weights_codec.decode(model.read_bytes())]
    rng = np.random.default_rng(0)
    delta = [rng.normal(0, 0.01, s).astype(np.float32) for s in shapes]
    item = tmp_path / "update.cbor"
    item.write_bytes(SoftDevice().item("update", update_payload(r, delta, 10), 1))
    before = _status(node)["counters"].get("rejected.update.unknown_device", 0)
    done = coap("-m", "post", "-t", "cbor", "-f", str(item), f"{node.uri}/update")
    err = done.stderr.decode()
    assert re.match(r"4\.01\b", err), err
    assert "OSCORE required" in err
    assert done.stdout == b""
    s = _status(node)
    assert s["counters"].get("rejected.update.unknown_device", 0) == before + 1
    assert s["round"]["updates"] == 0
