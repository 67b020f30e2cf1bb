"""Power loss while enqueuing: SIGKILL the outbox writer at random moments; nothing accepted is lost, torn or reused.

And two processes enqueuing at once (the flock) never share a seq.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from agent.uplink.outbox import Outbox
from support.outbox_worker import body

WORKER = Path(__file__).resolve().parents[1] / "support" / "outbox_worker.py"
QUOTA = 1 << 30  # nothing is dropped: every accepted item must still be there


def complete_lines(text: str) -> list[str]:
    """Lines the worker finished writing (a kill can cut the last one)."""
    lines = text.split("\n")
    return lines[:-1]


def test_killed_writer_loses_no_accepted_item_and_never_reuses_a_seq(workdir):
    root = workdir / "outbox"
    rng = random.Random(20240611)
    put: dict[int, str] = {}  # seq -> kind, reported once put() returned
    acked: set[int] = set()
    order: list[int] = []  # every reported seq, in the order the workers reported them
    seen_max = 0  # the highest seq any earlier cycle reported or left on disk
    for cycle in range(8):
        out = open(workdir / "worker.out", "w+")
        proc = subprocess.Popen([sys.executable, str(WORKER), "--root", str(root), "--ack-every", "3"],
                                stdout=out, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.3, 1.0))  # about 0.15 s of start-up, then a few hundred puts
        proc.kill()
        proc.wait(10)
        out.seek(0)
        cycle_seqs = []
        for line in complete_lines(out.read()):
            verb, seq, *rest = line.split()
            if verb == "put":
                assert int(seq) not in put, f"seq {seq} reported twice"
                put[int(seq)] = rest[0]
                cycle_seqs.append(int(seq))
            else:
                acked.add(int(seq))
        out.close()
        assert proc.stderr.read() == "", "the worker failed rather than being killed"
        proc.stderr.close()
        assert not cycle_seqs or cycle_seqs[0] > seen_max, f"cycle {cycle} reused a seq"
        order += cycle_seqs

        outbox = Outbox(root, QUOTA)  # reopen as after a power cut: tmp files go
        assert sorted(p.name for p in root.glob("*.tmp")) == []
        items = outbox.pending()
        assert outbox.stats()["quarantined"] == 0  # writes are atomic: never a torn item
        stored = [i.seq for i in items]
        assert stored == sorted(set(stored)), "a seq is stored twice"
        for item in items:  # every stored item, reported or not, holds exactly its bytes
            assert item.body == body(item.seq), f"seq {item.seq} holds other bytes"
        by_seq = {i.seq: i for i in items}
        for seq, kind in put.items():
            if seq in acked:
                assert seq not in by_seq, f"acked seq {seq} came back"
            elif seq % 3:  # seqs divisible by 3 may have been acked without the ack being reported
                assert seq in by_seq, f"accepted seq {seq} lost"
                assert by_seq[seq].kind == kind
        seen_max = max([seen_max, *cycle_seqs, *stored])

    assert order == sorted(set(order)), "reported seqs do not strictly increase across restarts"
    assert len(put) >= 50, "the worker never got going"
    assert len(acked) >= 10


def test_two_writers_at_once_never_share_a_seq(workdir):
    root = workdir / "outbox"
    go = workdir / "go"
    n = 200
    procs = [subprocess.Popen([sys.executable, str(WORKER), "--root", str(root), "--count", str(n),
                               "--go", str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        assert p.stdout.readline() == "ready\n"
    go.touch()  # both have the outbox open: start them together
    runs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        runs.append([int(line.split()[1]) for line in stdout.splitlines()])
    a, b = runs
    assert len(a) == len(b) == n
    assert a == sorted(set(a)) and b == sorted(set(b))
    assert set(a).isdisjoint(b), f"shared seqs {sorted(set(a) & set(b))[:10]}"
    assert min(b) < max(a) and min(a) < max(b), "the writers did not overlap: nothing was tested"
    items = Outbox(root, QUOTA).pending()
    assert [i.seq for i in items] == sorted(a + b) == list(range(1, 2 * n + 1))  # no gaps without crashes
    assert all(i.body == body(i.seq) for i in items)
