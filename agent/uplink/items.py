"""Building signed items: the kind's payload, the envelope around it, the secure world's signature."""

from __future__ import annotations

import time
from typing import Callable

import zstandard

from . import messages

ZSTD_LEVEL = 9  # updates are built once and sent once: worth a slower, tighter level


def envelope(kind: str, payload: dict, *, dev: bytes, seq: int, sign: Callable[[bytes], bytes],
             t: float | None = None) -> bytes:
    body = messages.encode(kind, payload)
    t = time.time() if t is None else t
    digest = messages.item_digest(kind, dev, seq, t, body)
    return messages.encode("item", {"v": messages.VERSION, "kind": kind, "dev": dev, "seq": seq, "t": t,
                                    "body": body, "sig": sign(digest)})


def update_payload(weights: bytes, *, round_id: int, model: str, base: bytes, width: float, samples: int,
                   compress: bool = True) -> dict:
    """An update item's payload from AITW or AITQ bytes (detected by magic)."""
    fmt = "aitq" if weights[:4] == b"AITQ" else "aitw"
    data = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(weights) if compress else weights
    return {"round": round_id, "model": model, "base": base, "width": float(width), "samples": samples,
            "format": fmt, "zstd": compress, "data": data}
