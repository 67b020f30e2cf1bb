"""The device NFT's mint request: EIP-712 typed data signed by the device key, and the token's metadata.

A BEP-721 contract mints a device token to ``owner`` only with the device's own signature over

    DeviceMint(address device,address owner,string board,uint256 fixedUtility,uint256 nonce,uint256 deadline)

in the domain {name "AITN Device", version "1", chainId, [verifyingContract]}: it recomputes the
EIP-712 digest, requires ecrecover(digest, signature) == device, nonce == nonces(device) (then
increments it) and block.timestamp <= deadline. That is IoTeX ioID's device Permit, and ERC-2612's
nonce and deadline. This module builds such a request, signs it through a callable (the CLI passes
the secure world), builds the ERC-721 metadata JSON, and verifies a request object
``{"typed_data", "signature", "metadata"}``. Time comes in as ``now`` (unix seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from tee_sim.abi.digests import checksum_address

from ..signature import InvalidSignature, recover_address
from ..utility.capacity import Probe
from . import eip712
from .errors import MintRequestInvalid

DOMAIN_NAME = "AITN Device"
DOMAIN_VERSION = "1"
PRIMARY_TYPE = "DeviceMint"
#: Chains a request may name: BNB Smart Chain and its testnet.
CHAINS = {56: "BNB Smart Chain", 97: "BNB Smart Chain testnet"}
DEFAULT_CHAIN_ID = 97
#: Default validity of a request: long enough to hand it to the owner and submit it.
DEFAULT_TTL_S = 7 * 86400
#: Longest board name (characters); board names are file stems such as "rpi4b".
MAX_BOARD = 64
#: Largest request object verify-mint reads (bytes); ours is about 3 KiB.
MAX_REQUEST_BYTES = 64 * 1024
#: Signatures with s above n/2 are refused, as OpenZeppelin's ECDSA.recover refuses them (malleability).
SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
UINT256_MAX = (1 << 256) - 1

MINT_TYPE = [{"name": "device", "type": "address"}, {"name": "owner", "type": "address"},
             {"name": "board", "type": "string"}, {"name": "fixedUtility", "type": "uint256"},
             {"name": "nonce", "type": "uint256"}, {"name": "deadline", "type": "uint256"}]
_DOMAIN_TYPE = [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"}]
_CONTRACT_MEMBER = {"name": "verifyingContract", "type": "address"}


@dataclass(frozen=True)
class MintRequest:
    device: bytes               # 20-byte address of the device key
    owner: bytes                # 20-byte address the token is minted to
    board: str                  # board name, "unknown" without a board file
    fixed_utility: int          # fixed work utility per 24-hour cycle, 1e-9 WU (MB per cycle)
    nonce: int                  # the contract's nonces(device); 0 for a device never minted
    deadline: int               # unix seconds; the contract refuses the request after it
    chain_id: int               # 56 or 97
    contract: bytes | None = None  # the NFT contract (verifyingContract); None: any contract with this domain


@dataclass(frozen=True)
class Verified:
    request: MintRequest
    digest: bytes
    expired: bool               # only ever True when allow_expired was given


def check_request(req: MintRequest, now: int, allow_expired: bool = False) -> None:
    """The values a contract would refuse, refused here first; raises MintRequestInvalid naming the field."""
    if req.chain_id not in CHAINS:
        raise MintRequestInvalid("domain.chainId", f"{req.chain_id} is not "
                                 + " or ".join(f"{k} ({v})" for k, v in CHAINS.items()))
    if req.owner == bytes(20):  # ERC-721 _mint reverts on the zero address
        raise MintRequestInvalid("message.owner", "the zero address cannot own a token")
    if not req.board or len(req.board) > MAX_BOARD or not req.board.isprintable():
        raise MintRequestInvalid("message.board", f"expected 1..{MAX_BOARD} printable characters, got {req.board!r}")
    for where, v in (("message.fixedUtility", req.fixed_utility), ("message.nonce", req.nonce),
                     ("message.deadline", req.deadline)):
        if not 0 <= v <= UINT256_MAX:
            raise MintRequestInvalid(where, f"{v} is outside uint256")
    if now > req.deadline and not allow_expired:
        raise MintRequestInvalid("message.deadline", f"{req.deadline} has passed (now {now})")


def typed_data(req: MintRequest) -> dict:
    """The full eth_signTypedData_v4 object; no verifyingContract member at all when ``contract`` is None."""
    domain: dict[str, Any] = {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": req.chain_id}
    domain_type = list(_DOMAIN_TYPE)
    if req.contract is not None:
        domain["verifyingContract"] = checksum_address(req.contract)
        domain_type.append(dict(_CONTRACT_MEMBER))
    return {"types": {"EIP712Domain": domain_type, PRIMARY_TYPE: [dict(m) for m in MINT_TYPE]},
            "primaryType": PRIMARY_TYPE, "domain": domain,
            "message": {"device": checksum_address(req.device), "owner": checksum_address(req.owner),
                        "board": req.board, "fixedUtility": req.fixed_utility, "nonce": req.nonce,
                        "deadline": req.deadline}}


def metadata(req: MintRequest, hw: Probe, soc: str, cpu: str) -> dict:
    """The token's ERC-721 metadata JSON (what its token URI serves), OpenSea-style attributes."""
    device = checksum_address(req.device)
    attrs = [("board", req.board), ("soc", soc), ("cpu", cpu), ("cpu_cores", hw.cores),
             ("cpu_max_mhz", hw.max_mhz), ("ram_mb", hw.ram_mb), ("gpu", "yes" if hw.gpu else "no"),
             ("npu", "yes" if hw.npu else "no"), ("fixed_utility", req.fixed_utility)]
    return {"name": f"AITN device {device[:10]}",
            "description": (f"Device NFT of an AI Technology Network robot (board {req.board}). Its key was created "
                            f"in, and never leaves, the device's secure world. Fixed work utility: "
                            f"{req.fixed_utility} nano-WU (MB of computing capacity) per 24-hour cycle."),
            "attributes": [{"trait_type": k, "value": v} for k, v in attrs],
            "properties": {"device": device, "chain_id": req.chain_id}}


def sign_request(req: MintRequest, sign: Callable[[bytes], bytes]) -> tuple[dict, bytes, bytes]:
    """(typed data, its digest, the 65-byte signature ``sign(digest)`` returned)."""
    td = typed_data(req)
    d = eip712.digest(td)
    return td, d, sign(d)


def _request_of(td: dict) -> MintRequest:
    """Our layout, exactly: only the shape eip712.digest already accepted is read here."""
    types = td["types"]
    if set(types) != {"EIP712Domain", PRIMARY_TYPE}:
        raise MintRequestInvalid("types", f"expected exactly EIP712Domain and {PRIMARY_TYPE}, got {sorted(types)}")
    if types[PRIMARY_TYPE] != MINT_TYPE:
        raise MintRequestInvalid(f"types.{PRIMARY_TYPE}", "expected " + ",".join(
            f"{m['type']} {m['name']}" for m in MINT_TYPE))
    if types["EIP712Domain"] not in (_DOMAIN_TYPE, _DOMAIN_TYPE + [_CONTRACT_MEMBER]):
        raise MintRequestInvalid("types.EIP712Domain", "expected name, version, chainId[, verifyingContract]")
    if td["primaryType"] != PRIMARY_TYPE:
        raise MintRequestInvalid("primaryType", f"expected {PRIMARY_TYPE}")
    domain, msg = td["domain"], td["message"]
    for key, want in (("name", DOMAIN_NAME), ("version", DOMAIN_VERSION)):
        if domain[key] != want:
            raise MintRequestInvalid(f"domain.{key}", f"expected {want!r}, got {domain[key]!r}")
    contract = domain.get("verifyingContract")
    return MintRequest(
        device=eip712.parse_address(msg["device"], "message.device"),
        owner=eip712.parse_address(msg["owner"], "message.owner"), board=msg["board"],
        fixed_utility=eip712.parse_int(msg["fixedUtility"], "message.fixedUtility"),
        nonce=eip712.parse_int(msg["nonce"], "message.nonce"),
        deadline=eip712.parse_int(msg["deadline"], "message.deadline"),
        chain_id=eip712.parse_int(domain["chainId"], "domain.chainId"),
        contract=eip712.parse_address(contract, "domain.verifyingContract") if contract is not None else None)


def _signature(value: Any) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise MintRequestInvalid("signature", "expected 0x-prefixed hex of r || s || v")
    try:
        sig = bytes.fromhex(value[2:])
    except ValueError:
        raise MintRequestInvalid("signature", "not hex") from None
    if len(sig) != 65:
        raise MintRequestInvalid("signature", f"expected 65 bytes (r || s || v), got {len(sig)}")
    if sig[64] not in (27, 28):
        raise MintRequestInvalid("signature", f"v is {sig[64]}, expected 27 or 28")
    if int.from_bytes(sig[32:64], "big") > SECP256K1_HALF_N:
        raise MintRequestInvalid("signature", "s is in the upper half of the curve order (a contract refuses it)")
    return sig


def _check_metadata(md: Any, req: MintRequest) -> None:
    """The metadata is not signed: it must at least say what the signed message says."""
    if not isinstance(md, dict) or not isinstance(md.get("properties"), dict) \
            or not isinstance(md.get("attributes"), list):
        raise MintRequestInvalid("metadata", "expected an object with properties and attributes")
    props = md["properties"]
    if str(props.get("device", "")).lower() != "0x" + req.device.hex():
        raise MintRequestInvalid("metadata.properties.device", "does not match message.device")
    if props.get("chain_id") != req.chain_id:
        raise MintRequestInvalid("metadata.properties.chain_id", "does not match domain.chainId")
    traits = {a.get("trait_type"): a.get("value") for a in md["attributes"] if isinstance(a, dict)}
    for trait, signed, field in (("board", req.board, "board"), ("fixed_utility", req.fixed_utility, "fixedUtility")):
        if traits.get(trait) != signed:
            raise MintRequestInvalid(f"metadata.attributes.{trait}", f"does not match message.{field}")


def verify(obj: Any, now: int, allow_expired: bool = False) -> Verified:
    """Check a request object: typed data well formed and ours, signed by ``message.device``, metadata
    consistent, deadline not passed (unless ``allow_expired``). Raises IdentityError naming the field."""
    if not isinstance(obj, dict):
        raise MintRequestInvalid("request", "expected a JSON object {typed_data, signature, metadata}")
    for key in ("typed_data", "signature"):
        if key not in obj:
            raise MintRequestInvalid(key, "missing")
    extra = [k for k in obj if k not in ("typed_data", "signature", "metadata")]
    if extra:
        raise MintRequestInvalid(str(extra[0]), "not a key of a mint request")
    td = obj["typed_data"]
    d = eip712.digest(td)          # well-formed EIP-712, every field named on failure
    req = _request_of(td)          # and exactly our DeviceMint layout
    check_request(req, now, allow_expired=True)
    sig = _signature(obj["signature"])
    try:
        signer = recover_address(d, sig)
    except InvalidSignature as e:
        raise MintRequestInvalid("signature", str(e)) from None
    if signer != req.device:
        raise MintRequestInvalid("signature", f"recovers {checksum_address(signer)}, not message.device "
                                              f"{checksum_address(req.device)}: the request was altered or "
                                              "signed by another key")
    if "metadata" in obj:
        _check_metadata(obj["metadata"], req)
    expired = now > req.deadline
    if expired and not allow_expired:
        raise MintRequestInvalid("message.deadline", f"{req.deadline} has passed (now {now}); the contract "
                                                     "would refuse it")
    return Verified(req, d, expired)
