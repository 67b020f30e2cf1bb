"""Device side of enrollment: a signed key share out, the node's signed share back, a context written.

The node's address is pinned: given by the operator (``--node-address``) or, if not, trusted on
first use and recorded in HOME/uplink/node.json; a later enrollment answered by another key fails.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..signature import InvalidSignature, verify
from . import messages
from .errors import EnrollmentError, NodeUnreachable, UplinkError
from .link import LinkConfig, NodeLink, read_node, uplink_dir, write_node
from .oscore_ctx import derive, write_context, x25519_keypair

Signer = Callable[[bytes], bytes]  # 32-byte digest -> 65-byte signature by the device key


@dataclass(frozen=True)
class Pending:
    """An enrollment request on its way: what the answer must be checked and completed with."""

    data: bytes
    digest: bytes
    key: X25519PrivateKey
    capacity: float


def request(*, dev: bytes, pub: bytes, board: str, capacity: float, sign: Signer) -> Pending:
    key, share = x25519_keypair()
    req = {"v": messages.VERSION, "dev": dev, "pub": pub, "board": board, "capacity": float(capacity),
           "x25519": share, "t": time.time()}
    digest = messages.enroll_digest(req)
    req["sig"] = sign(digest)
    return Pending(messages.encode("enroll", req), digest, key, float(capacity))


def complete(home: Path, uri: str, pending: Pending, answer: bytes, node_address: bytes | None = None) -> dict:
    """Check the node's answer, write the OSCORE context and node.json; returns the record."""
    if node_address is None:
        previous = read_node(home)
        node_address = bytes.fromhex(previous["node"]) if previous else None
    try:
        ans = messages.decode("enrolled", answer)
        verify(messages.enrolled_digest(pending.digest, ans), ans["sig"], ans["node"])
    except (messages.MessageError, InvalidSignature) as e:
        raise EnrollmentError(f"the node's answer does not verify: {e}") from None
    if node_address is not None and ans["node"] != node_address:
        raise EnrollmentError(f"answered by node 0x{ans['node'].hex()}, expected 0x{node_address.hex()}")
    secret, salt = derive(pending.key, ans["x25519"], pending.digest)
    folder = uplink_dir(home)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_context(folder / "oscore", ans["sid"], ans["rid"], secret, salt)
    record = {"uri": uri.rstrip("/"), "node": ans["node"].hex(), "sid": ans["sid"].hex(), "enrolled": time.time(),
              "capacity": pending.capacity}   # the node checks work-utility reports against it
    write_node(home, record)
    return record


async def enroll(home: Path, uri: str, *, dev: bytes, pub: bytes, board: str, capacity: float, sign: Signer,
                 node_address: bytes | None = None, cfg: LinkConfig = LinkConfig()) -> dict:
    """Enroll with the node at ``uri``; returns the record written to node.json. Raises EnrollmentError."""
    pending = request(dev=dev, pub=pub, board=board, capacity=capacity, sign=sign)
    link = await NodeLink.open(home, uri, cfg, protected=False)
    try:
        answer = await link.post("enroll", pending.data)
    except UplinkError as e:
        err = EnrollmentError(f"enrollment at {uri}: {e}")
        err.unreachable = isinstance(e, NodeUnreachable)   # nobody answered (retry later) vs. a refusal
        raise err from None
    finally:
        await link.close()
    return complete(home, uri, pending, answer, node_address)
