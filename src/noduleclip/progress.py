"""Progress of long work: tqdm's bar on a terminal, a plain line every few seconds anywhere else.

`progress_bar(...)` takes tqdm's usual arguments and returns, when the stream it writes to (stderr) is a
terminal, a tqdm bar as before. When it is not (a CI log, `nohup`, `make demo > log`), a bar would fill
the file with carriage-return redraws, so it returns a `PlainProgress` instead: one line every `interval`
seconds (10 by default) and one at the end, such as

    fold 1/5: 120/400 steps (30%), 2:10 elapsed, about 5:03 left, epoch 3/10, loss 0.512

`NODULECLIP_PROGRESS=bar` forces the bar and `NODULECLIP_PROGRESS=plain` the plain lines, whatever the stream.
Both kinds share the small interface the package uses: iteration over a wrapped iterable, `update(n)`,
`set_postfix(**values)`, `close()` and use as a context manager.
"""

from __future__ import annotations

import numbers
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from types import TracebackType
from typing import Any, Generic, Protocol, TextIO, TypeVar, overload

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

ENV = "NODULECLIP_PROGRESS"
"""Environment variable: `bar` (tqdm's bar), `plain` (plain lines) or unset/`auto` (bar on a terminal only)."""

DEFAULT_INTERVAL = 10.0
"""Seconds between two plain lines."""


class Progress(Protocol[T_co]):
    """What the package uses of a progress bar; tqdm's bar and `PlainProgress` both have it."""

    def update(self, n: float = 1) -> object: ...

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None: ...

    def close(self) -> None: ...

    def __iter__(self) -> Iterator[T_co]: ...

    def __enter__(self) -> Progress[T_co]: ...

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> object: ...


def use_bar(file: TextIO | None = None) -> bool:
    """Whether progress written to `file` (default stderr) is drawn as tqdm's bar: the override, else a terminal."""
    choice = os.environ.get(ENV, "").strip().lower()
    if choice in ("bar", "plain"):
        return choice == "bar"
    stream = sys.stderr if file is None else file
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no stream, or a closed one
        return False


@overload
def progress_bar(iterable: Iterable[T], total: float | None = None, desc: str = "", unit: str = "it",
             disable: bool = False, initial: float = 0, *, interval: float = DEFAULT_INTERVAL,
             file: TextIO | None = None, **kwargs: Any) -> Progress[T]: ...


@overload
def progress_bar(iterable: None = None, total: float | None = None, desc: str = "", unit: str = "it",
             disable: bool = False, initial: float = 0, *, interval: float = DEFAULT_INTERVAL,
             file: TextIO | None = None, **kwargs: Any) -> Progress[Any]: ...


def progress_bar(iterable: Iterable[Any] | None = None, total: float | None = None, desc: str = "", unit: str = "it",
             disable: bool = False, initial: float = 0, *, interval: float = DEFAULT_INTERVAL,
             file: TextIO | None = None, **kwargs: Any) -> Progress[Any]:
    """A progress bar over `iterable` (or updated by hand): tqdm's on a terminal, `PlainProgress` elsewhere.

    The arguments are tqdm's; `interval` (seconds between plain lines) and `file` (default stderr) apply to the
    plain lines, the other keyword arguments (`dynamic_ncols`, ...) only to tqdm's bar.
    """
    if not disable and use_bar(file):
        from tqdm.auto import tqdm

        bar: Progress[Any] = tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=file, **kwargs)
        return bar
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, disable=disable, initial=initial,
                         interval=interval, file=file)


class PlainProgress(Generic[T]):
    """Progress as plain lines: at most one every `interval` seconds while it runs, and always one on `close()`.

    Each line holds the description, the count (of the total, with the percentage, when it is known), the
    time elapsed, the time left (estimated from the rate since the start, while unfinished) and the postfix.
    No line holds a carriage return. Disabled, it writes nothing.
    """

    def __init__(self, iterable: Iterable[T] | None = None, total: float | None = None, desc: str = "",
                 unit: str = "it", disable: bool = False, initial: float = 0, interval: float = DEFAULT_INTERVAL,
                 file: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if total is None and isinstance(iterable, Sized):
            total = len(iterable)  # as tqdm does
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.disable = disable
        self.initial = initial
        self.n = initial
        self.interval = float(interval)
        self.file = file
        self.clock = clock
        self.postfix: dict[str, Any] = {}
        self.closed = False
        self.started = clock()
        self.last_line = self.started

    # -- the interface shared with tqdm --------------------------------------------------------------------
    def update(self, n: float = 1) -> None:
        """Count `n` more; write a line when `interval` seconds have passed since the last one (or the start), unless
        the count is complete: closing writes that line, once."""
        if self.closed:
            return
        self.n += n
        now = self.clock()
        if now - self.last_line >= self.interval and (self.total is None or self.n < self.total):
            self._write(now, final=False)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Replace the values shown after the counts (`loss=0.512` shows as `loss 0.512`); writes nothing itself."""
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def close(self) -> None:
        """Write the final line (once), with the count reached and the total time."""
        if self.closed:
            return
        self.closed = True
        self._write(self.clock(), final=True)

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("this progress reporter wraps no iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress[T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # -- the line ------------------------------------------------------------------------------------------
    def line(self, now: float | None = None, final: bool = False) -> str:
        """The text of one progress line at time `now` (default: the clock's)."""
        now = self.clock() if now is None else now
        elapsed = max(0.0, now - self.started)
        if self.total is not None:
            parts = [f"{_number(self.n)}/{_number(self.total)} {_plural(self.unit, self.total)}"
                     + (f" ({int(100 * self.n / self.total)}%)" if self.total > 0 else "")]
        else:
            parts = [f"{_number(self.n)} {_plural(self.unit, self.n)}"]
        parts.append(f"{format_seconds(elapsed)} elapsed")
        done = self.n - self.initial
        if not final and self.total is not None and done > 0 and self.n < self.total:
            parts.append(f"about {format_seconds(elapsed / done * (self.total - self.n))} left")
        parts += [f"{key} {_value(value)}" for key, value in self.postfix.items()]
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def _write(self, now: float, final: bool) -> None:
        self.last_line = now
        if self.disable:
            return
        stream = sys.stderr if self.file is None else self.file
        stream.write(self.line(now, final) + "\n")
        stream.flush()


def format_seconds(seconds: float) -> str:
    """`M:SS`, or `H:MM:SS` from an hour on (tqdm's format)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _number(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else f"{n:.1f}"


def _plural(unit: str, count: float) -> str:
    if count == 1 or unit in ("it", "") or unit.endswith("s"):
        return unit
    return unit + ("es" if unit.endswith(("ch", "sh", "x", "z")) else "s")


def _value(value: Any) -> str:
    """A postfix value as tqdm shows it: numbers in 3 significant digits where that is shorter."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        short = f"{value:.3g}".replace("e+0", "e+").replace("e-0", "e-")
        return short if len(short) < len(str(value)) else str(value)
    return str(value)
