"""Helpers every command group uses: output, the unchained session, the device identity, the store."""

from __future__ import annotations

import argparse
import json

from tee_sim.abi import digests
from tee_sim.abi.ids import Cmd

from .. import config
from ..config import Globals
from ..signature import verify
from ..tee.access import ChainAccess
from ..tee.client import TeeClient


def _print(args: argparse.Namespace, obj: dict, text: str) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True) if getattr(args, "json", False) else text)


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _unchained(g: Globals, cmd: Cmd, params: tuple):
    """One command on a fresh, unsynced session (STATUS, GET_PUBKEY): outside the chain."""
    client = TeeClient.connect(g.tee, g.timeout)
    try:
        s = client.open_session()
        resp = client.invoke(s.id, cmd, params)
        client.close_session(s.id)
    finally:
        client.close()
    return resp


def chain_access(g: Globals) -> ChainAccess:
    """Chained sessions opened per operation, each waiting up to ``g.lock_wait_s`` for the chain."""
    return ChainAccess(g.tee, g.home, g.timeout, g.lock_wait_s)


def verify_and_address(g: Globals, digest: bytes, signature: bytes) -> str:
    """Check a fresh signature against the device's public key before showing it to anyone."""
    address = _identity(g)[1]
    verify(digest, signature, address)
    return digests.checksum_address(address)


def _identity(g: Globals) -> tuple[bytes, bytes]:
    resp = _unchained(g, Cmd.GET_PUBKEY, (65, 20, None, None))
    return resp.params[0], resp.params[1]


def _datasets(g: Globals):
    from ..store.datasets import DatasetStore

    return DatasetStore(g.home / "store", config.DEFAULT_STORE_QUOTA)
