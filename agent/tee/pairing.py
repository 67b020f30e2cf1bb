"""`aitn tee pair`: create the device key if needed, run the X25519 pairing, write a new chain.

The secure world refuses to replace an existing pairing unless its operator allowed re-pairing
(``python -m tee_sim allow-repair`` on the secure side). A replaced chain file is kept beside the
new one as ``chain.<old pairing id>.log``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tee_sim.abi import block as blk
from tee_sim.abi import pairing as abi_pairing
from tee_sim.abi.frame import Value
from tee_sim.abi.ids import FLAG_KEY, Cmd

from ..errors import TeeProtocolError
from .chainlog import ChainLog
from .client import TeeClient
from .session import CHAIN_FILE, ChainedSession


@dataclass(frozen=True)
class Paired:
    pairing_id: bytes
    timelock: int
    public_key: bytes
    address: bytes
    created_key: bool
    archived: Path | None


def pair(url: str, home: Path, timelock: int = 0, timeout: float = 10.0, lock_wait_s: float = 0.0) -> Paired:
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)  # the chain's block hashes are the normal world's half of the pairing secret
    path = home / CHAIN_FILE
    old: ChainLog | None = None
    if path.exists():
        old = ChainLog.open(path, lock_wait_s)  # holds the lock: nobody uses the old pairing meanwhile
    try:
        client = TeeClient.connect(url, timeout)
        try:
            session = client.open_session()
            created = False
            if not session.flags & FLAG_KEY:
                client.invoke(session.id, Cmd.CREATE_KEY, (65, None, None, None))
                created = True
            resp = client.invoke(session.id, Cmd.GET_PUBKEY, (65, 20, None, None))
            public_key, address = resp.params[0], resp.params[1]
            private, nw_public = abi_pairing.new_ephemeral()
            resp = client.invoke(session.id, Cmd.PAIR, (nw_public, Value(timelock, 0), 48, None))
            out, info = resp.params[2], resp.params[3]
            if not isinstance(out, bytes) or len(out) != 48 or not isinstance(info, Value):
                raise TeeProtocolError("PAIR answer lacks its parameters")
            tee_public, pairing_id, iterations = out[:32], out[32:], info.a
            secret = abi_pairing.derive_secret(private, tee_public, pairing_id, public_key, nw_public, tee_public)
            client.close_session(session.id)
        finally:
            client.close()
        archived = None
        if old is not None:
            archived = home / f"chain.{old.pairing_id.hex()}.log"
            path.rename(archived)
            old.close()
            old = None
        ChainLog.create(path, pairing_id, iterations, blk.genesis(secret, pairing_id, iterations))
    finally:
        if old is not None:
            old.close()
    with ChainedSession.open(url, home, timeout=timeout) as s:  # both sides derived the same genesis
        s.sync()
    return Paired(pairing_id, iterations, public_key, address, created, archived)

