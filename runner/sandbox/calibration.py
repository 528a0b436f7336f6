"""The trusted launcher's calibration, read from the train container's stderr up to the hand-over. TRUSTED CODE.

The launcher (trainer/harness/launch.py) times a fixed kernel after the host hands the candidate over and before
it runs train.py, and prints the seconds as trainer.contract's calibration line, then LAUNCHED_LINE. The host
reads the stderr stream alone (one pipe: its lines come in the order they were written, unlike the engine's merge
of both streams) from the container's start, and stops at the first LAUNCHED_LINE: nothing the candidate prints,
on either stream, can come before that line, so a calibration line the candidate prints is never read
(trainer.contract.parse_calibration).

    reader = StartupReader(container).start()    # before the hand-over: a daemon thread follows stderr
    calibration = reader.result()                 # after the train phase: {"seconds": "0.3412", ...} or None

The reader follows from before the hand-over, so it has read the launcher's lines long before the candidate could
fill the engine's capped log (spec.LOG_MAX_SIZE) and have it rotated away. A launcher that never printed the line
(no calibration, an old image, a hand-over that failed) gives None: the trial is then not compared on speed.
"""
from __future__ import annotations

import threading

from trainer.contract import LAUNCHED_LINE, MAX_PRELAUNCH_LINES, MAX_STEP_LINE, parse_calibration

JOIN_S = 5.0                 # how long result() waits for the reader after the train phase (it is done by then)


class StartupReader:
    """Follows a container's stderr on a daemon thread until its LAUNCHED_LINE; keeps the lines before it."""

    def __init__(self, container):
        self.container = container
        self.lines: list[str] = []
        self._stream = None
        self._thread: threading.Thread | None = None

    def start(self) -> "StartupReader":
        self._thread = threading.Thread(target=self._run, name="calibration", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        pending = b""
        try:
            self._stream = self.container.logs(stream=True, follow=True, stdout=False, stderr=True)
            for chunk in self._stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip("\r")[:MAX_STEP_LINE]
                    self.lines.append(line)
                    if line == LAUNCHED_LINE or len(self.lines) > MAX_PRELAUNCH_LINES:
                        return
                if len(pending) > MAX_STEP_LINE * 4:      # a line with no end is no calibration line
                    pending = b""
        except Exception:  # noqa: BLE001 - the stream ends with an error when the container is removed
            pass
        finally:
            self._close()

    def _close(self) -> None:
        """Close the stream and its HTTP response: the socket is freed now, not when a garbage collection finds the
        stream's reference cycle (one engine connection a trial otherwise)."""
        stream, self._stream = self._stream, None
        response = getattr(stream, "_response", None)
        for close in (getattr(stream, "close", None), getattr(response, "close", None)):
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - already closed
                    pass

    def result(self, join_s: float = JOIN_S) -> dict[str, str] | None:
        """The calibration line's fields ({"seconds": ..., "kernel": ..., "threads": ..., "device": ...}), or
        None when the launcher printed none before its LAUNCHED_LINE. Stops the reader."""
        if self._thread is not None:
            self._thread.join(join_s)
            if self._thread.is_alive():
                self._close()
                self._thread.join(1.0)
        return parse_calibration(list(self.lines))


def seconds(calibration: dict[str, str] | None) -> float | None:
    """The calibration's seconds as a number (parse_calibration checked it), or None."""
    return None if calibration is None else round(float(calibration["seconds"]), 4)
