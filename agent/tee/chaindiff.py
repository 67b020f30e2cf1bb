"""Comparing the two copies of the private chain: `aitn chain diff`, and the self-test's chain check.

What can be compared is limited by design: block hashes never leave the secure world, and no
command returns the hash of a block at a height. What the ABI gives:

- STATUS: the secure world's pairing id, time-lock, committed height C, tentative blocks,
  failures and lockout;
- one **probe**: a SYNC at M = min(N, C), exactly what the next handshake sends. The secure
  world accepts only M = C or C - 1 (it refuses M < C - 1 as behind, before any tag check), so a
  binary search over heights is not possible. A tag that matches proves that every block up to M
  is the same in both worlds (each hash commits to all earlier ones); one that does not tells that
  some block at or below M differs, and counts as one failure toward the lockout, as the handshake
  it predicts would.

The normal world's copy is read without repairing anything (``ChainReader``): every block is
verified from genesis, so a damaged or edited record is found at its own height. The first
divergent block is therefore exact when the normal world's copy is damaged or shorter than the
secure world's, and a range [1, M] when both copies verify but the probe fails (a fork).

Recoveries use the names of docs/handshake.md: ``resync`` (the next SYNC reconciles by itself),
``re-pair`` (allow-repair on the secure side, then `aitn tee pair`), ``pair``, ``restore-chain``
(the right chain file is in HOME under its archived name), ``wait`` (lockout), and
``fix-secure-state`` (the secure world's sealed state is unusable: only its operator can act).
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tee_sim.abi import block as blk
from tee_sim.abi.frame import Value
from tee_sim.abi.ids import Cmd, TeecResult

from ..errors import AgentError, ChainCorrupt, NotPaired
from .chainlog import ChainReader
from .client import TeeClient
from .session import CHAIN_FILE

_ARCHIVED = re.compile(r"^chain\.([0-9a-f]{32})\.log$")

REPAIR_STEPS = ["python -m tee_sim allow-repair --state STATE_DIR --minutes 10   # secure side, its user or root",
                "aitn tee pair   # keeps the old chain as HOME/chain.<old pairing id>.log"]


@dataclass(frozen=True)
class NormalView:
    """The normal world's copy, read-only."""

    path: str
    exists: bool
    error: str = ""  # the file is there but could not be read as a chain
    pairing_id: str | None = None
    timelock: int | None = None
    records: int = 0
    head: int | None = None  # the last height that verifies from genesis
    bad_height: int | None = None  # the first that does not
    bad_reason: str = ""
    torn_tail: bool = False  # ChainLog.open would drop the bad records rather than refuse the file
    archived: dict[str, str] = field(default_factory=dict)  # pairing id -> HOME/chain.<id>.log


@dataclass(frozen=True)
class SecureView:
    """The secure world's side, from STATUS."""

    key: bool
    paired: bool
    pairing_id: str | None
    committed: int | None
    tentative: int
    timelock: int | None
    failures: int
    lockout_seconds: float
    state_error: str | None
    status: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Probe:
    outcome: str  # match | mismatch | behind | locked | ack_mismatch | error
    height: int
    detail: str


@dataclass(frozen=True)
class Diagnosis:
    state: str
    ok: bool  # nothing for an operator to do
    error: str | None  # the exception a handshake would raise now (agent/errors.py)
    recovery: str
    first_divergent: int | None
    divergent_range: tuple[int, int] | None
    summary: str
    steps: list[str]


# -- observing both worlds ------------------------------------------------------------------------


def archived_chains(home: Path) -> dict[str, str]:
    out = {}
    if home.is_dir():
        for p in sorted(home.iterdir()):
            m = _ARCHIVED.match(p.name)
            if m:
                out[m.group(1)] = str(p)
    return out


def normal_view(reader: ChainReader | None, path: Path, archived: dict[str, str], error: str = "") -> NormalView:
    if reader is None:
        return NormalView(str(path), path.exists(), error=error, archived=archived)
    scan = reader.scan()
    return NormalView(str(path), True, "", reader.pairing_id.hex(), reader.timelock, scan.records,
                      scan.head.height if scan.head else None, scan.bad_height, scan.bad_reason, scan.torn_tail,
                      archived)


def secure_view(client: TeeClient) -> SecureView:
    """STATUS on an unsynced session of ``client``."""
    sid = client.open_session().id
    try:
        st = json.loads(client.invoke(sid, Cmd.STATUS, (None, 4096, None, None)).params[1])
    finally:
        client.close_session(sid)
    return SecureView(bool(st.get("key")), bool(st.get("paired")), st.get("pairing_id"), st.get("committed_height"),
                      int(st.get("tentative", 0)), st.get("timelock"), int(st.get("failures", 0)),
                      float(st.get("lockout_seconds", 0.0)), st.get("state_error"), st)


def effective_head(nv: NormalView) -> int | None:
    """The head the normal world will have once it opens its chain (a torn tail dropped)."""
    if nv.head is None or (nv.bad_height is not None and not nv.torn_tail):
        return None
    return nv.head


def probe_height(nv: NormalView, sv: SecureView) -> int | None:
    """The height a SYNC probe would claim, or None when pairing, heights or lockout decide alone."""
    n = effective_head(nv)
    if (n is None or not sv.paired or sv.state_error or sv.committed is None or sv.lockout_seconds > 0
            or nv.pairing_id != sv.pairing_id):
        return None
    if n < sv.committed - 1:
        return None  # the secure world refuses it as behind, before looking at the tag
    return min(n, sv.committed)


def probe(client: TeeClient, reader: ChainReader, height: int) -> Probe:
    """One SYNC at ``height``, as a handshake would send it; the normal world's copy is left as it is."""
    opened = client.open_session()
    try:
        rec = reader.record(height)
        if rec is None:
            return Probe("error", height, f"block {height} is not readable in the normal world's copy")
        committed = opened.committed_height
        tag = blk.sync_tag(rec.hash, opened.nonce, height)
        nw_nonce = secrets.token_bytes(blk.NONCE_SIZE)
        _, _, resp = client.exchange(client.request(opened.id, Cmd.SYNC, (
            Value(height & 0xFFFFFFFF, height >> 32), tag + nw_nonce, 32 + blk.BLOCK_FIELDS_SIZE, None)))
        if resp.result == TeecResult.MAC_INVALID:
            return Probe("mismatch", height, f"the secure world does not hold this chain's block {height} "
                                             "(counted as one failure toward the lockout)")
        if resp.result == TeecResult.BAD_STATE:
            return Probe("behind", height, f"the secure world refused height {height} as behind its {committed}")
        if resp.result == TeecResult.BUSY:
            return Probe("locked", height, "the secure world is locked out")
        if resp.result != TeecResult.SUCCESS or not isinstance(resp.params[2], bytes):
            return Probe("error", height, f"SYNC answered 0x{resp.result:08X}")
        out, head_hash = resp.params[2], rec.hash
        if height + 1 == committed and len(out) == 32 + blk.BLOCK_FIELDS_SIZE:
            head_hash = blk.block_from_fields(rec.hash, out[32:], reader.timelock).hash
        if not hmac.compare_digest(out[:32], blk.sync_ack(head_hash, opened.nonce, nw_nonce, committed)):
            return Probe("ack_mismatch", height, "the secure world accepted the tag but its answer does not "
                                                 "verify against this chain")
        return Probe("match", height, f"both worlds hold the same block {height} (and so every block before it)")
    finally:
        try:
            client.close_session(opened.id)
        except AgentError:
            pass


# -- the verdict (pure) ---------------------------------------------------------------------------

#: The secure world's cap on a lockout (tee_sim/lockout.py: max_seconds), and the failures after which
#: the default policy (1 s, doubling from the third failure) reaches it.
LOCKOUT_CAP = 3600.0
CAP_AFTER_FAILURES = 15


def clock_hint(failures: int, lockout_seconds: float) -> str:
    """A lockout at its cap after few failures: the secure world's clock most likely went backwards."""
    if lockout_seconds < LOCKOUT_CAP - 1 or failures >= CAP_AFTER_FAILURES:
        return ""
    return (f"; {lockout_seconds:g} s is the one-hour cap, far more than {failures} failures earn: the secure "
            "world's clock was most likely set back (a board without RTC before NTP): set the clock right and the "
            "lockout ends at its original deadline")


def diagnose(nv: NormalView, sv: SecureView, pr: Probe | None) -> Diagnosis:
    """Which state the two copies are in, and the recovery that applies."""
    def d(state, ok, error, recovery, summary, steps, first=None, rng=None) -> Diagnosis:
        return Diagnosis(state, ok, error, recovery, first, rng, summary, steps)

    if sv.state_error:
        return d("secure_state_unusable", False, "TeeBadState", "fix-secure-state",
                 f"the secure world's sealed state is unusable: {sv.state_error}. It answers only STATUS; "
                 "re-pairing is refused too",
                 ["restore the secure world's state directory that belongs to this board, or reprovision it"])
    if not sv.paired:
        if not nv.exists:
            return d("not_paired", False, "NotPaired", "pair", "neither world is paired", ["aitn tee pair"])
        new_key = "" if sv.key else " The secure world has no device key either: pairing creates a new one, " \
                                    "so the device gets a new address (enroll it again)."
        return d("secure_state_lost", False, "NotPaired", "re-pair",
                 "the normal world has a chain but the secure world is not paired: its state was lost or "
                 "replaced." + new_key, ["aitn tee pair   # the old chain is kept as HOME/chain.<id>.log"])
    restore = nv.archived.get(sv.pairing_id or "")
    restore_steps = [f"mv {nv.path} {nv.path}.broken", f"mv {restore} {nv.path}", "aitn chain diff"]
    if not nv.exists:
        if restore:
            return d("nw_missing", False, "NotPaired", "restore-chain",
                     f"no {CHAIN_FILE} but {restore} holds the secure world's pairing {sv.pairing_id}",
                     restore_steps)
        return d("nw_missing", False, "NotPaired", "re-pair",
                 f"the secure world is paired (pairing {sv.pairing_id}, committed {sv.committed}) but the normal "
                 "world has no chain: its home was lost", REPAIR_STEPS)
    if nv.error:
        return d("nw_corrupt", False, "ChainCorrupt", "re-pair", f"the normal world's chain is unreadable: "
                 f"{nv.error}", REPAIR_STEPS)
    if nv.pairing_id != sv.pairing_id:
        if restore:
            return d("foreign_pairing", False, "ChainMismatch", "restore-chain",
                     f"the normal world's chain belongs to pairing {nv.pairing_id}, the secure world's is "
                     f"{sv.pairing_id}; {restore} is the secure world's", restore_steps)
        return d("foreign_pairing", False, "ChainMismatch", "re-pair",
                 f"the normal world's chain belongs to pairing {nv.pairing_id}, the secure world's is "
                 f"{sv.pairing_id} (a home from another device or an older pairing)", REPAIR_STEPS)
    c = sv.committed
    assert c is not None
    if nv.bad_height is not None and not nv.torn_tail:
        return d("nw_corrupt", False, "ChainCorrupt", "re-pair",
                 f"the normal world's block {nv.bad_height} {nv.bad_reason}, with {nv.records - nv.bad_height - 1} "
                 "blocks after it: damage, not a torn tail", REPAIR_STEPS, first=nv.bad_height)
    n = effective_head(nv)
    assert n is not None
    torn = (f" ({nv.records - nv.bad_height} torn records from block {nv.bad_height} are dropped when the "
            "chain is next opened)") if nv.bad_height is not None else ""
    if n < c - 1:
        first = n + 1
        return d("nw_behind", False, "ChainBehind", "re-pair",
                 f"the normal world's chain ends at {n}, the secure world committed {c}: restored from an older "
                 f"copy or cut{torn}. The secure world refuses it (SYNC BAD_STATE)", REPAIR_STEPS, first=first,
                 rng=(first, c))
    if sv.lockout_seconds > 0 or (pr is not None and pr.outcome == "locked"):
        hint = clock_hint(sv.failures, sv.lockout_seconds)
        return d("locked_out", False, "TeeLockedOut", "wait",
                 f"the secure world is locked out for {sv.lockout_seconds:g} s after {sv.failures} failures in a "
                 f"row; the chains cannot be compared until it ends{hint}",
                 (["date; timedatectl   # on the secure world's side"] if hint else [])
                 + [f"sleep {max(1, int(sv.lockout_seconds + 0.999))}; aitn chain diff",
                    "find who sends wrong proofs: aitn tee capture, and the secure log's E/TA lines"])
    if pr is None:
        raise ValueError("heights are consistent: a probe is needed")
    if pr.outcome == "mismatch":
        return d("mismatch", False, "ChainMismatch", "re-pair",
                 f"both copies have pairing {sv.pairing_id} and verify, but they differ at or below block "
                 f"{pr.height}: a forked or foreign chain (restored from a backup that then grew its own "
                 f"history). The ABI has no finer probe than this one SYNC{torn}", REPAIR_STEPS, rng=(1, pr.height))
    if pr.outcome != "match":
        return d("probe_failed", False, "ChainMismatch" if pr.outcome == "ack_mismatch" else None, "check-transport",
                 f"the probe at height {pr.height} failed: {pr.detail}", ["aitn tee status"])
    if n > c:
        return d("nw_ahead", True, None, "resync",
                 f"the normal world holds {n - c} tentative blocks above the committed {c}; the next SYNC drops "
                 f"them{torn}", ["nothing: the next handshake reconciles"])
    if n == c - 1:
        return d("nw_one_behind", True, None, "resync",
                 f"the normal world lacks the last committed block {c} (it stopped before writing it); the next "
                 f"SYNC re-delivers it{torn}", ["nothing: the next handshake reconciles"], first=c, rng=(c, c))
    return d("in_sync", True, None, "none", f"both worlds hold the same chain up to the committed height {c}{torn}",
             [])


# -- the whole comparison ----------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    normal: NormalView
    secure: SecureView
    probe: Probe | None
    diagnosis: Diagnosis

    def to_json(self) -> dict:
        return {"normal_world": asdict(self.normal), "secure_world": {k: v for k, v in asdict(self.secure).items()
                                                                      if k != "status"},
                "probe": asdict(self.probe) if self.probe else None, **asdict(self.diagnosis)}


def compare(url: str, home: Path, timeout: float = 10.0, lock_wait_s: float = 0.0) -> Report:
    """Both views and, when heights leave it open, one SYNC probe. Raises TeeUnavailable, ChainBusy
    (an agent holds the chain for more than ``lock_wait_s``)."""
    path = home / CHAIN_FILE
    archived = archived_chains(home)
    reader, error = None, ""
    try:
        reader = ChainReader.open(path, lock_wait_s)
    except NotPaired:
        pass
    except ChainCorrupt as e:
        error = str(e)
    try:
        nv = normal_view(reader, path, archived, error)
        client = TeeClient.connect(url, timeout)
        try:
            sv = secure_view(client)
            m = probe_height(nv, sv)
            pr = probe(client, reader, m) if m is not None and reader is not None else None
        finally:
            client.close()
    finally:
        if reader is not None:
            reader.close()
    return Report(nv, sv, pr, diagnose(nv, sv, pr))


def format_report(r: Report) -> list[str]:
    nv, sv, dg = r.normal, r.secure, r.diagnosis
    if nv.exists and not nv.error:
        bad = f", block {nv.bad_height} {nv.bad_reason}" if nv.bad_height is not None else ""
        nw = f"height {nv.head} of {nv.records} records, pairing {nv.pairing_id}{bad}"
    else:
        nw = nv.error or "no chain"
    sw = (f"committed {sv.committed} (+{sv.tentative} tentative), pairing {sv.pairing_id}" if sv.paired
          else "not paired") + (f", locked out {sv.lockout_seconds:g} s" if sv.lockout_seconds else "")
    lines = [f"normal world  {nw}", f"secure world  {sw}"]
    if r.probe:
        lines.append(f"probe         SYNC at {r.probe.height}: {r.probe.outcome} ({r.probe.detail})")
    lines.append(f"state         {dg.state}" + (f" ({dg.error})" if dg.error else ""))
    if dg.first_divergent is not None:
        lines.append(f"first divergent block  {dg.first_divergent}")
    elif dg.divergent_range is not None:
        lines.append(f"divergent block in     [{dg.divergent_range[0]}, {dg.divergent_range[1]}]")
    lines.append(f"recovery      {dg.recovery}: {dg.summary}")
    lines += [f"  $ {s}" for s in dg.steps]
    return lines
