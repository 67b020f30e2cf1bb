"""`aitn identity mint-request` and `verify-mint`: the device NFT's mint request (agent/cli/tee.py owns `identity`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tee_sim.abi import digests

from ..config import Globals
from ..errors import AgentError
from ..fsio import write_atomic
from ..identity import eip712, mint
from ..identity.errors import IdentityError, MintRequestInvalid
from ..tee import handshake
from ..utility.capacity import fixed_nano_wu, probe
from .common import _hex, _identity, _print, chain_access, verify_and_address


def _utc(t: int) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def signed_mint_request(g: Globals, owner: bytes, chain_id: int, contract: bytes | None = None, nonce: int = 0,
                        deadline: int | None = None) -> tuple[dict, mint.MintRequest, bytes, str]:
    """(the JSON object, the request, its digest, the signer's checksummed address), signed by the secure world."""
    now = int(time.time())
    hw = g.board.hardware if g.board else None
    p = probe(hw)
    device = _identity(g)[1]
    req = mint.MintRequest(device=device, owner=owner, board=g.board.name if g.board else "unknown",
                           fixed_utility=fixed_nano_wu(p), nonce=nonce,
                           deadline=deadline if deadline is not None else now + mint.DEFAULT_TTL_S,
                           chain_id=chain_id, contract=contract)
    mint.check_request(req, now)  # before the secure world signs anything
    with chain_access(g).session() as s:
        td, d, sig = mint.sign_request(req, lambda digest: handshake.sign_digest(s, digest).signature)
    address = verify_and_address(g, d, sig)
    obj = {"typed_data": td, "signature": _hex(sig),
           "metadata": mint.metadata(req, p, hw.soc if hw else "unknown", hw.cpu if hw else "unknown")}
    mint.verify(obj, now)  # what we hand out is what verify-mint accepts
    return obj, req, d, address


def cmd_mint_request(g: Globals, args: argparse.Namespace) -> int:
    obj, req, d, address = signed_mint_request(g, args.owner, args.chain_id, args.contract, args.nonce, args.deadline)
    td, sig = obj["typed_data"], bytes.fromhex(obj["signature"][2:])
    if args.out:
        try:
            write_atomic(Path(args.out), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
        except OSError as e:
            raise AgentError(f"{args.out}: {e.strerror or e}") from None
    contract = td["domain"].get("verifyingContract", "any (no verifyingContract in the domain)")
    lines = [f"mint request: device {address} to owner {td['message']['owner']}",
             f"  chain {req.chain_id} ({mint.CHAINS[req.chain_id]}), contract: {contract}",
             f"  board {req.board}, fixed utility {req.fixed_utility} nano-WU per 24-hour cycle",
             f"  nonce {req.nonce}, deadline {req.deadline} ({_utc(req.deadline)})",
             f"  digest    {_hex(d)}", f"  signature {_hex(sig)}"]
    if args.out:
        lines.append(f"written to {args.out}")
    _print(args, obj, "\n".join(lines))
    return 0


def _read_request(name: str) -> object:
    try:
        if name == "-":
            data = sys.stdin.buffer.read(mint.MAX_REQUEST_BYTES + 1)
        else:
            with open(name, "rb") as f:
                data = f.read(mint.MAX_REQUEST_BYTES + 1)
    except OSError as e:
        raise AgentError(f"{name}: {e.strerror or e}") from None
    if len(data) > mint.MAX_REQUEST_BYTES:
        raise MintRequestInvalid(name, f"larger than {mint.MAX_REQUEST_BYTES} bytes")

    def no_duplicates(pairs: list) -> dict:
        # Python keeps the last of two equal keys, other parsers the first: refuse the ambiguity.
        obj = {}
        for k, v in pairs:
            if k in obj:
                raise MintRequestInvalid(name, f"duplicate key {k!r}")
            obj[k] = v
        return obj

    try:
        return json.loads(data, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError) as e:
        raise MintRequestInvalid(name, f"not JSON: {e}") from None


def cmd_verify_mint(g: Globals, args: argparse.Namespace) -> int:
    v = mint.verify(_read_request(args.file), int(time.time()), allow_expired=args.allow_expired)
    r = v.request
    address = digests.checksum_address(r.device)
    obj = {"address": address, "owner": digests.checksum_address(r.owner), "chain_id": r.chain_id,
           "contract": digests.checksum_address(r.contract) if r.contract else None, "nonce": r.nonce,
           "deadline": r.deadline, "expired": v.expired, "digest": _hex(v.digest)}
    _print(args, obj, address + ("  (expired: accepted because of --allow-expired)" if v.expired else ""))
    return 0


def _address_arg(text: str) -> bytes:
    try:
        return eip712.parse_address(text, "address")
    except IdentityError as e:
        raise argparse.ArgumentTypeError(e.reason) from None


def _uint_arg(text: str) -> int:
    try:
        v = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= v <= mint.UINT256_MAX:
        raise argparse.ArgumentTypeError(f"{v} is outside uint256")
    return v


def add_identity_commands(id_p, json_flag) -> None:
    """Add mint-request and verify-mint to the `identity` subparsers (called by agent/cli/tee.py)."""
    p = id_p.add_parser("mint-request", help="an EIP-712 mint request for the device NFT, signed by the device key")
    p.add_argument("--owner", required=True, type=_address_arg, metavar="0x...", help="address the token goes to")
    p.add_argument("--chain-id", type=int, choices=sorted(mint.CHAINS), default=mint.DEFAULT_CHAIN_ID,
                   help=f"56 BNB Smart Chain, 97 its testnet (default {mint.DEFAULT_CHAIN_ID})")
    p.add_argument("--contract", type=_address_arg, metavar="0x...",
                   help="the NFT contract (the domain's verifyingContract; default: none, any contract)")
    p.add_argument("--nonce", type=_uint_arg, default=0, metavar="N",
                   help="the contract's nonces(device) (default 0: a device never minted)")
    p.add_argument("--deadline", type=_uint_arg, metavar="UNIX_SECONDS",
                   help=f"last second the contract accepts it (default now + {mint.DEFAULT_TTL_S // 86400} days)")
    p.add_argument("--out", metavar="FILE", help="also write the JSON object to FILE (atomically)")
    json_flag(p)
    p.set_defaults(func=cmd_mint_request)
    p = id_p.add_parser("verify-mint", help="check a mint request: schema, signer == message.device, deadline")
    p.add_argument("file", metavar="FILE", help="the request's JSON object, - for stdin")
    p.add_argument("--allow-expired", action="store_true", help="accept a request whose deadline has passed")
    json_flag(p)
    p.set_defaults(func=cmd_verify_mint)
