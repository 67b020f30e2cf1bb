"""Pseudonyms computed by the real secure world: stable under one key (across a restart of the secure
world), unlinkable across keys (two devices), and the key never reaches the normal world."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from agent.errors import ChainBusy
from agent.tee.access import ChainAccess
from agent.tee.chainlog import ChainLog
from agent.tee.pairing import pair
from agent.tee.pseudonym import TeePseudonymizer

BADGE = b"04:A2:19:7C:3B:5D:80"
DOMAIN_OPERATOR = 2


def _pseudonyms(url: str, home, values: list[bytes]) -> list[bytes]:
    return TeePseudonymizer(ChainAccess(url, home).session)(DOMAIN_OPERATOR, values)


def test_the_chain_is_held_only_while_pseudonyms_are_computed(tee, home, paired):
    p = TeePseudonymizer(ChainAccess(tee.url, home).session)
    first = p(DOMAIN_OPERATOR, [BADGE, b"x", BADGE])
    assert first[0] == first[2] and p.exchanges == 2 and p.sessions == 1
    with ChainLog.open(home / "chain.log"):      # free between calls: another process may take it
        assert p(DOMAIN_OPERATOR, [b"x", BADGE]) == [first[1], first[0]]   # cached: no session needed
        with pytest.raises(ChainBusy):
            p(DOMAIN_OPERATOR, [b"new"])
    assert p.sessions == 2 and p.exchanges == 2
    assert p(DOMAIN_OPERATOR, [b"new"])[0] not in first and p.exchanges == 3


def test_stable_under_one_key_unlinkable_across_keys(make_tee, workdir):
    a, b = make_tee("a"), make_tee("b")
    home_a, home_b = workdir / "home-a", workdir / "home-b"
    home_a.mkdir()
    home_b.mkdir()
    pair(a.url, home_a)
    pair(b.url, home_b)
    values = [BADGE, b"04:5E:C1:2A:90:6B:81", b""]
    first = _pseudonyms(a.url, home_a, values)
    assert len(set(first)) == 3 and all(len(p) == 32 for p in first)
    a.stop()
    a.start()                                        # the secure world restarts: its sealed key persists
    assert _pseudonyms(a.url, home_a, values) == first
    other = _pseudonyms(b.url, home_b, values)
    assert not set(other) & set(first)               # another device's key: nothing to link
    # Nothing in the normal world's files lets anyone recompute them: not the raw value's hash,
    # and not an HMAC under anything the normal world stores.
    for p in first:
        assert p != hashlib.sha256(BADGE).digest()
    for f in home_a.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for i in range(0, max(len(data) - 31, 0), 16):
                assert hmac.digest(data[i:i + 32], b"aitn/pseudonym/v1" + DOMAIN_OPERATOR.to_bytes(4, "big") + BADGE,
                                   "sha256") != first[0]
