"""`aitn provision` (first boot) and `aitn agent run` (the normal world's service)."""

from __future__ import annotations

import argparse
import os

from ..config import Globals
from .common import _print


def cmd_provision(g: Globals, args: argparse.Namespace) -> int:
    from ..daemon import provision as prov

    if g.board is None:
        from ..errors import ConfigError

        raise ConfigError("provision needs the board: --board NAME (aitn board list)")
    user = prov.drop_to_home_owner(g.home)
    want = prov.Provisioning(board=g.board.name, node=args.node, role=args.role, listen=args.listen,
                             policy=args.policy)
    node_address = bytes.fromhex(args.node_address.removeprefix("0x")) if args.node_address else None
    out = prov.provision(g, want, node_address=node_address, wait_s=args.wait)
    if user:
        out["user"] = user
    lines = [f"device {out['address']} ({want.board}, role {want.role}) at node {out['node']['uri']} "
             f"(0x{out['node']['node']})"]
    lines += [f"  {c}" for c in out["changed"]] or ["  already provisioned: nothing changed"]
    if args.owner is not None:
        from .identity import signed_mint_request

        obj, _req, _d, address = signed_mint_request(g, args.owner, args.chain_id)
        out["mint_request"] = obj
        lines.append(f"mint request for owner {obj['typed_data']['message']['owner']} on chain {args.chain_id}, "
                     f"signed by {address}:")
        import json

        lines.append(json.dumps(obj, indent=2, sort_keys=True))
    _print(args, out, "\n".join(lines))
    return 0


def cmd_agent_run(g: Globals, args: argparse.Namespace) -> int:
    from ..daemon import supervisor

    return supervisor.run(g, dict(os.environ))


def add_parsers(sub, json_flag) -> None:
    from .identity import _address_arg

    p = sub.add_parser("provision", help="first boot: key, pairing, enrollment, configuration (idempotent)")
    p.add_argument("--node", required=True, metavar="URI", help="the group's node, coap://HOST:PORT")
    p.add_argument("--node-address", metavar="0x..", help="the node's address to pin (default: trust on first use)")
    p.add_argument("--owner", type=_address_arg, metavar="0x...", help="also print the device-NFT mint request")
    p.add_argument("--chain-id", type=int, choices=(56, 97), default=97, help="the mint request's chain")
    p.add_argument("--role", choices=("device", "node"), default="device",
                   help="node: this device also serves its group (aitn agent run starts aitn node serve)")
    p.add_argument("--listen", default="0.0.0.0:5683", help="the node role's CoAP address")
    p.add_argument("--policy", help="desensitization policy for ingest (default $AITN_POLICY, /etc/aitn/policy.toml)")
    p.add_argument("--wait", type=float, default=60.0, help="role node: seconds to wait for its own node to answer")
    json_flag(p)
    p.set_defaults(func=cmd_provision)
    a = sub.add_parser("agent", help="the normal world's service").add_subparsers(dest="cmd", required=True)
    p = a.add_parser("run", help="ready once the secure world answers; run ingest, device rounds and the node "
                                 "role as provisioned (systemd: Type=notify, watchdog)")
    p.set_defaults(func=cmd_agent_run)
