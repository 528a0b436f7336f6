"""The log pump (runner/sandbox/containers.py) reads what the candidate prints, which is hostile: the export line it
schedules the next slot on is acted on once, only as a whole line, and not even a flood or a failing callback
keeps it from the rest of the stream. A fake container pins the exact stream; test_sandbox_slot.py runs the real one."""
from __future__ import annotations

from runner.sandbox.containers import EXPORTING_LINE, LINES_PER_SECOND, LogPump


class StreamingContainer:
    name = "fake"

    def __init__(self, chunks):
        self.chunks = chunks

    def logs(self, **kwargs):
        assert kwargs["stream"] and kwargs["follow"]
        return iter(self.chunks)


def _pump(chunks, on_exporting, on_line=None) -> LogPump:
    pump = LogPump(StreamingContainer(chunks), on_line, on_exporting=on_exporting).start()
    pump.join(5)
    return pump


def test_the_export_line_is_acted_on_once_even_when_a_candidate_prints_it_again():
    calls = []
    line = EXPORTING_LINE.encode()
    pump = _pump([b"step=1 loss=3\n" + line[:9], line[9:] + b"\n" + line + b"\n", b"tail\n"],
                 lambda: calls.append(1))
    assert calls == [1] and pump.exporting_at is not None and list(pump.tail)[-1] == "tail"


def test_a_line_that_only_contains_the_export_line_is_not_it():
    calls = []
    pump = _pump([b"echo " + EXPORTING_LINE.encode() + b"\n", EXPORTING_LINE.encode() + b" now\n"],
                 lambda: calls.append(1))
    assert calls == [] and pump.exporting_at is None


def test_a_flood_of_lines_past_the_rate_limit_does_not_hide_the_export_line():
    calls, seen = [], []
    flood = b"".join(b"x%d\n" % i for i in range(LINES_PER_SECOND * 3))
    pump = _pump([flood, EXPORTING_LINE.encode() + b"\n"], lambda: calls.append(1), on_line=seen.append)
    assert pump.dropped > 0 and EXPORTING_LINE not in seen                 # the display lost it, the pump did not
    assert calls == [1]


def test_a_failing_callback_does_not_stop_the_stream():
    def broken():
        raise RuntimeError("engine gone")
    pump = _pump([EXPORTING_LINE.encode() + b"\n", b"step=2 loss=1\n", b"last\n"], broken)
    assert pump.exporting_at is not None and list(pump.tail)[-2:] == ["step=2 loss=1", "last"]
