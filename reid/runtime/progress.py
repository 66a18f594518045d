"""Progress of long loops: a tqdm bar on a terminal, a few plain lines in a log file."""

import math
import sys
import time

from tqdm import tqdm


class _LogProgress:
    """Progress for log files: a few whole lines on stderr instead of a redrawn bar.

    Prints `desc: n/total (p%), s s` at 25, 50 and 75 % when at least `interval` seconds
    passed since the last line, and a final `desc: n/total in s s` line (with the
    `set_postfix` values) when the loop completes. Nothing is printed for a loop that
    stops on an error.
    """

    def __init__(self, iterable, desc, total, interval):
        self.iterable, self.desc, self.interval = iterable, desc, interval
        if total is None:
            try:
                total = len(iterable)
            except TypeError:
                total = None
        self.total, self.postfix = total, ""

    def set_postfix(self, **values):
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def _line(self, text):
        print(f"{self.desc}: {text}" + (f", {self.postfix}" if self.postfix else ""), file=sys.stderr, flush=True)

    def __iter__(self):
        start = last = time.perf_counter()
        total, n = self.total, 0
        marks = sorted({math.ceil(total * q / 4) for q in (1, 2, 3)} - {0, total}) if total else []
        for item in self.iterable:
            yield item
            n += 1
            if marks and n >= marks[0]:
                while marks and n >= marks[0]:
                    marks.pop(0)
                now = time.perf_counter()
                if now - last >= self.interval:
                    last = now
                    self._line(f"{n}/{total} ({100 * n // total}%), {now - start:.1f} s")
        count = f"{n}/{total}" if total is not None else str(n)
        self._line(f"{count} in {time.perf_counter() - start:.1f} s")


_PROGRESS = {"enabled": True}


def set_progress(enabled):
    """Switch progress output on or off (off in the processes of a torchrun other than the first)."""
    _PROGRESS["enabled"] = bool(enabled)


class _Silent:
    def __init__(self, iterable):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix(self, **values):
        pass


def progress(iterable, desc, total=None, interval=10.0):
    """Iterate with progress: a tqdm bar on a terminal, a few plain lines otherwise.

    When stderr is not a terminal (a log file, a pipe, CI), tqdm's carriage-return
    updates would fill the log with thousands of partial lines; a `_LogProgress` writes
    at most four (see there). Both have `set_postfix(**values)`.
    """
    if not _PROGRESS["enabled"]:
        return _Silent(iterable)
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
    return _LogProgress(iterable, desc, total, interval)
