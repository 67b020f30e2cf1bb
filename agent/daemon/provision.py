"""First-boot provisioning: key, pairing, enrollment, configuration, in that order, each only if needed.

``provision`` is idempotent: every step first looks at what is there and does nothing when it is
already right, so a second run reports no change. It never creates a key when the secure world
has one (pairing only creates a key the first time) and never re-pairs worlds that agree on their
pairing. What it writes is HOME/provision.json, which `aitn agent run` reads to know what to run,
and which the CLI reads for the board when none is given.
"""

from __future__ import annotations

import json
import os
import pwd
from dataclasses import asdict, dataclass
from pathlib import Path

from tee_sim.abi.ids import Cmd

from ..config import Globals
from ..errors import AgentError, ConfigError
from ..fsio import write_atomic
from ..tee.chainlog import ChainLog
from ..tee.client import TeeClient
from ..tee.session import CHAIN_FILE

PROVISION_FILE = "provision.json"
ROLES = ("device", "node")


@dataclass(frozen=True)
class Provisioning:
    board: str
    node: str                  # coap://HOST:PORT of the group's node (for a node: its own address, as devices reach it)
    role: str = "device"       # "node": this device also serves its group (aitn node serve)
    listen: str = "0.0.0.0:5683"   # the node role's CoAP address
    policy: str | None = None  # desensitization policy file for ingest (None: $AITN_POLICY or /etc/aitn/policy.toml)

    def check(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"role {self.role!r}: one of {', '.join(ROLES)}")
        if not self.node.startswith(("coap://", "coap+tcp://")):
            raise ConfigError(f"--node {self.node!r}: expected coap://HOST:PORT")
        if self.policy is not None and not Path(self.policy).is_file():
            raise ConfigError(f"--policy {self.policy}: no such file")


def read(home: Path) -> Provisioning | None:
    try:
        raw = json.loads((Path(home) / PROVISION_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{Path(home) / PROVISION_FILE}: {e}") from None
    try:
        p = Provisioning(**{k: raw[k] for k in raw if k in Provisioning.__dataclass_fields__})
    except TypeError as e:
        raise ConfigError(f"{Path(home) / PROVISION_FILE}: {e}") from None
    return p


def drop_to_home_owner(home: Path) -> str | None:
    """Started as root on a provisioned system: become the user that owns HOME (aitn), whose uid the
    secure world serves and whose files the service writes. Returns the user name, or None."""
    if os.geteuid() != 0 or not home.exists():
        return None
    st = home.stat()
    if st.st_uid == 0:
        return None
    user = pwd.getpwuid(st.st_uid)
    os.setgroups(os.getgrouplist(user.pw_name, user.pw_gid))
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.environ["HOME"] = user.pw_dir
    return user.pw_name


def secure_world_status(g: Globals) -> dict:
    """STATUS on a fresh session outside the chain (what `aitn tee status` shows). Raises TeeUnavailable."""
    client = TeeClient.connect(g.tee, g.timeout)
    try:
        s = client.open_session()
        resp = client.invoke(s.id, Cmd.STATUS, (None, 4096, None, None))
        client.close_session(s.id)
    finally:
        client.close()
    return json.loads(resp.params[1])


def device_key(g: Globals) -> tuple[bytes, bytes]:
    """(public key, address) of the device key."""
    client = TeeClient.connect(g.tee, g.timeout)
    try:
        s = client.open_session()
        resp = client.invoke(s.id, Cmd.GET_PUBKEY, (65, 20, None, None))
        client.close_session(s.id)
    finally:
        client.close()
    return resp.params[0], resp.params[1]


def worlds_paired(g: Globals) -> bool:
    """Both worlds agree on one pairing: the secure world is paired and our chain names the same pairing."""
    st = secure_world_status(g)
    path = g.home / CHAIN_FILE
    if not st.get("paired") or not path.exists():
        return False
    try:
        with ChainLog.open(path, g.lock_wait_s) as c:
            return c.pairing_id.hex() == st.get("pairing_id")
    except AgentError:
        return False


def provision(g: Globals, want: Provisioning, *, node_address: bytes | None = None, wait_s: float = 60.0) -> dict:
    """Bring the device to ``want``; returns {"changed": [steps done], "address", "provisioning", "node"}.

    The configuration is written before enrolling: with role "node" the device enrolls with its own
    node, which `aitn agent run` starts when it sees the configuration, so enrollment is retried
    for up to ``wait_s`` while that node comes up.
    """
    import asyncio
    import time

    from ..tee.pairing import pair
    from ..tee.access import ChainAccess
    from ..uplink.enroll import enroll
    from ..uplink.errors import EnrollmentError
    from ..uplink.link import LinkConfig, read_node
    from ..utility import capacity

    want.check()
    changed: list[str] = []
    if not worlds_paired(g):
        p = pair(g.tee, g.home, timeout=g.timeout, lock_wait_s=g.lock_wait_s)
        changed.append("created the device key and paired the worlds" if p.created_key else "paired the worlds")
    pub, dev = device_key(g)
    path = g.home / PROVISION_FILE
    before = read(g.home)

    def write_config() -> None:
        if read(g.home) != want:
            write_atomic(path, (json.dumps(asdict(want), indent=1, sort_keys=True) + "\n").encode())
            changed.append(f"wrote {path}")

    if want.role == "node":
        write_config()   # `aitn agent run` starts our own node from it; enrollment below waits for that node
    node = read_node(g.home)
    if node is None or node.get("uri") != want.node.rstrip("/") or "capacity" not in node:
        deadline = time.monotonic() + (wait_s if want.role == "node" else 0.0)
        while True:
            try:
                access = ChainAccess(g.tee, g.home, g.timeout, g.lock_wait_s)
                asyncio.run(enroll(g.home, want.node, dev=dev, pub=pub, board=want.board,
                                   capacity=capacity.capacity(capacity.probe(g.board.hardware)),
                                   sign=access.sign_digest, node_address=node_address, cfg=LinkConfig()))
                break
            except EnrollmentError as e:
                if e.unreachable and time.monotonic() <= deadline:
                    time.sleep(2.0)
                    continue
                if want.role == "node" and read(g.home) != before:   # leave the configuration as it was
                    if before is None:
                        path.unlink(missing_ok=True)
                    else:
                        write_atomic(path, (json.dumps(asdict(before), indent=1, sort_keys=True) + "\n").encode())
                raise
        changed.append(f"enrolled with {want.node}")
    write_config()
    return {"changed": changed, "address": "0x" + dev.hex(), "provisioning": asdict(want), "node": read_node(g.home)}
