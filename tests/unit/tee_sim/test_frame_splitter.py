"""tee_sim.abi.frame.StreamSplitter: whole frames out of a byte stream, resynchronising after damage."""

from __future__ import annotations

import pytest

from tee_sim.abi import frame
from tee_sim.abi.ids import Cmd

from tee_sim.abi.frame import (HEADER_SIZE, MAX_BODY, Frame, FrameCorrupt, FrameError, FrameMalformed, FrameTooLarge,
                               Kind, StreamSplitter)
from frame_helpers import (OFF_BODY_LEN, OFF_RESERVED, OFF_SESSION, OFF_VERSION, flip, invoke, put, reply)

# -- StreamSplitter --------------------------------------------------------------------------------

def _three_frames() -> list[bytes]:
    return [frame.encode(invoke(Cmd.SIGN, request_id=1)), frame.encode(reply(Cmd.PROOF)),
            frame.encode(Frame(Kind.CLOSE_SESSION, 3, 5, 0, 0))]


def feed_all(chunks) -> tuple[list[bytes], list[FrameError], StreamSplitter]:
    s = StreamSplitter()
    frames, errors = [], []
    for c in chunks:
        for item in s.feed(c):
            (errors if isinstance(item, FrameError) else frames).append(item)
    return frames, errors, s


def test_splitter_returns_whole_frames_and_empties_its_buffer():
    frames = _three_frames()
    got, errors, s = feed_all([b"".join(frames)])
    assert got == frames and errors == [] and s.pending == 0


def test_splitter_reassembles_a_stream_cut_at_every_byte_boundary():
    frames = _three_frames()
    stream = b"".join(frames)
    for cut in range(len(stream) + 1):
        got, errors, s = feed_all([stream[:cut], stream[cut:]])
        assert (got, errors, s.pending) == (frames, [], 0), f"cut at {cut}"


def test_splitter_reassembles_a_stream_fed_byte_by_byte():
    frames = _three_frames()
    stream = b"".join(frames)
    s = StreamSplitter()
    got = []
    for i in range(len(stream)):
        items = s.feed(stream[i:i + 1])
        assert all(isinstance(x, bytes) for x in items)
        got += items
        assert s.pending == (i + 1) - sum(map(len, got))
    assert got == frames


def test_splitter_waits_for_the_rest_of_a_frame():
    raw = _three_frames()[0]
    s = StreamSplitter()
    assert s.feed(raw[:-1]) == []
    assert s.pending == len(raw) - 1
    assert s.feed(raw[-1:]) == [raw]


@pytest.mark.parametrize("garbage", [b"x", b"line noise\r\n", b"\xe0", b"\xe0\x0e\x77", b"\xe0\x0e\x77\xa0",
                                     b"\x00" * 100, bytes(range(256))])
def test_splitter_reports_garbage_and_delivers_the_following_frames(garbage):
    f1, f2, f3 = _three_frames()
    stream = garbage + f1 + garbage + f2 + f3
    for chunks in ([stream], [stream[i:i + 1] for i in range(len(stream))]):
        got, errors, s = feed_all(chunks)
        assert got == [f1, f2, f3]
        assert errors and all(type(e) is FrameCorrupt for e in errors)
        assert s.pending == 0


def test_splitter_resyncs_after_a_frame_with_a_flipped_body_byte():
    f1, f2, f3 = _three_frames()
    bad = flip(f1, HEADER_SIZE + 3)
    got, errors, s = feed_all([bad + f2 + f3])
    assert got == [f2, f3]
    assert len(errors) == 1 and type(errors[0]) is FrameCorrupt
    assert s.pending == 0


def test_splitter_resyncs_after_a_frame_with_a_bad_header():
    f1, f2, _ = _three_frames()
    for bad, expected in [(flip(f1, OFF_SESSION), FrameCorrupt),
                          (put(f1, OFF_VERSION, "B", 2), FrameMalformed),
                          (put(f1, OFF_RESERVED, "H", 1), FrameMalformed)]:
        got, errors, _s = feed_all([bad + f2])
        assert got == [f2]
        assert [type(e) for e in errors] == [expected]


def _rejected_then_good() -> list[tuple[str, bytes, type]]:
    """(name, a frame the splitter must reject, its error class); each is followed by a good frame."""
    f1 = _three_frames()[0]
    return [("bad-crc", flip(f1, HEADER_SIZE + 3), FrameCorrupt),
            ("bad-version", put(f1, OFF_VERSION, "B", 2), FrameMalformed),
            ("oversized-body-len", put(f1, OFF_BODY_LEN, "I", 0xFFFFFFFF)[:HEADER_SIZE], FrameTooLarge)]


@pytest.mark.parametrize("case", range(3), ids=["bad-crc", "bad-version", "oversized-body-len"])
def test_splitter_resyncs_after_a_rejected_frame_at_every_cut(case):
    _name, bad, expected = _rejected_then_good()[case]
    good = _three_frames()[1]
    stream = bad + good
    for cut in range(len(stream) + 1):
        got, errors, s = feed_all([stream[:cut], stream[cut:]])
        assert got == [good], f"cut at {cut}"
        # A rejected header's body_len is not trusted: body bytes arriving after it are reported as garbage.
        assert type(errors[0]) is expected and all(type(e) is FrameCorrupt for e in errors[1:]), f"cut at {cut}"
        assert s.pending == 0


@pytest.mark.parametrize("magic_bytes", [1, 2, 3])
@pytest.mark.parametrize("case", range(3), ids=["bad-crc", "bad-version", "oversized-body-len"])
def test_splitter_keeps_a_partial_magic_after_a_rejected_frame(case, magic_bytes):
    # The read that completes the rejected frame ends 1-3 bytes into the next frame's magic; the next
    # read brings the rest. The good frame must still come out ("one corrupt frame never swallows the
    # frame behind it"). Regression: the resync path used to drop such a partial magic.
    _name, bad, _expected = _rejected_then_good()[case]
    good = _three_frames()[1]
    got, _errors, _s = feed_all([bad + good[:magic_bytes], good[magic_bytes:]])
    assert got == [good]


def test_splitter_does_not_buffer_for_an_oversized_body_len():
    _, f2, _ = _three_frames()
    huge = put(_three_frames()[0], OFF_BODY_LEN, "I", 0xFFFFFFFF)[:HEADER_SIZE]
    s = StreamSplitter()
    items = s.feed(huge)
    assert [type(e) for e in items] == [FrameTooLarge]
    assert s.pending == 0
    # What follows the bogus header (here: a long run of filler) is not held for it.
    chunk = b"\x55" * 4096
    for _ in range(64):
        items = s.feed(chunk)
        assert all(type(e) is FrameCorrupt for e in items)
        assert s.pending < 4
    assert s.feed(f2) == [f2]
    assert s.pending == 0


def test_splitter_oversized_body_len_then_frame_in_one_read():
    f1, f2, _ = _three_frames()
    huge = put(f1, OFF_BODY_LEN, "I", MAX_BODY + 1)
    got, errors, s = feed_all([huge + f2])
    assert got == [f2]
    assert [type(e) for e in errors] == [FrameTooLarge]
    assert s.pending == 0


def test_splitter_reset_drops_a_partial_frame():
    f1, f2, _ = _three_frames()
    s = StreamSplitter()
    assert s.feed(f1[:20]) == []
    s.reset()
    assert s.pending == 0
    assert s.feed(f2) == [f2]


def test_splitter_output_decodes():
    frames = _three_frames()
    got, _, _ = feed_all([b"".join(frames)])
    assert [frame.decode(r) for r in got] == [frame.decode(r) for r in frames]


def test_find_magic_skips_offset_zero():
    f1, f2, _ = _three_frames()
    assert frame.find_magic(f1 + f2) == len(f1)
    assert frame.find_magic(f1 + f2, 0) == 0
    assert frame.find_magic(b"no magic here") == -1
