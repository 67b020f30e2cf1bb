"""A device key in software, for the node's unit tests (integration tests sign in the real secure world).

It signs exactly as the secure world does (r || s || v over the raw 32-byte digest), so the node's
checks are exercised; it never stands in for the secure world in a test of the device.
"""

from __future__ import annotations

import coincurve
import numpy as np

from agent.train import weights as weights_codec
from agent.uplink import items
from tee_sim.abi.digests import address_of


class SoftDevice:
    def __init__(self, secret: bytes | None = None) -> None:
        self.key = coincurve.PrivateKey(secret) if secret else coincurve.PrivateKey()
        self.pub = self.key.public_key.format(compressed=False)
        self.addr = address_of(self.pub)

    def sign(self, digest: bytes) -> bytes:
        sig = self.key.sign_recoverable(digest, hasher=None)
        return sig[:64] + bytes([27 + sig[64]])

    def item(self, kind: str, payload: dict, seq: int, t: float = 1_800_000_000.0) -> bytes:
        return items.envelope(kind, payload, dev=self.addr, seq=seq, sign=self.sign, t=t)


def manifest(n: int = 0) -> dict:
    return {"cids": [f"bafkreitest{n:04d}"], "records": 100 + n, "bytes": 4096, "policy": "default@sha256:00"}


def update_payload(rnd: dict, tensors: list[np.ndarray], samples: int, compress: bool = True) -> dict:
    return items.update_payload(weights_codec.encode(tensors), round_id=rnd["round"], model=rnd["model"],
                                base=rnd["hash"], width=rnd["width"], samples=samples, compress=compress)
