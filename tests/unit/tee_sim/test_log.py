"""tee_sim.log: OP-TEE's line layout (short prefix for info, function:line for error, debug, flow)."""

from __future__ import annotations

import io
import threading

import pytest

from tee_sim.log import SecureLog, format_line


@pytest.mark.parametrize("lvl, comp, line", [
    (2, "TC", "I/TC: listening"),
    (2, "TA", "I/TA: listening"),
    (1, "TA", "E/TA:  fn:12 listening"),
    (3, "TA", "D/TA:  fn:12 listening"),
    (4, "TA", "F/TA:  fn:12 listening"),
    (1, "TC", "E/TC:? 5 fn:12 listening"),
])
def test_format(lvl, comp, line):
    assert format_line(lvl, comp, "listening", "fn", 12, 5) == line


def _where_it_logs(log: SecureLog) -> None:
    log.error("TA", "refused")
    log.debug("TC", "conn 7: uid 0")


def test_lines_name_the_calling_function_and_thread():
    out = io.StringIO()
    log = SecureLog(3, out)
    t = threading.Thread(target=_where_it_logs, args=(log,), name="conn-7")
    t.start()
    t.join()
    log.error("TC", "main")
    log.info("TA", "hello")
    log.flow("TA", "too detailed")  # above level 3
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("E/TA:  _where_it_logs:") and lines[0].endswith(" refused")
    assert lines[1].startswith("D/TC:? 7 _where_it_logs:")  # the thread serving connection 7
    assert lines[2].startswith("E/TC:? 0 test_lines_name_the_calling_function_and_thread:")
    assert lines[3] == "I/TA: hello" and len(lines) == 4


def test_level_out_of_range():
    with pytest.raises(ValueError):
        SecureLog(5)
