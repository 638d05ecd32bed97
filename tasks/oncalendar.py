"""systemd OnCalendar expressions (systemd.time(7), "Calendar Events"), checked on the laptop.

The grammar below follows systemd's: `[WEEKDAYS] [DATE] [TIME] [TIMEZONE]`, a shorthand (daily,
weekly...) or `@EPOCH`. When systemd-analyze is installed here, it has the last word as well.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import zoneinfo

SHORTHANDS = {"minutely", "hourly", "daily", "weekly", "monthly", "yearly", "annually", "quarterly",
              "semiannually", "semi-annually", "biannually", "bi-annually"}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DATE = re.compile(r"(?:([^-~]+)-)?([^-~]+)([-~])([^-~]+)")


def check_calendar(expression: str) -> None:
    """Raise ValueError unless systemd accepts this OnCalendar expression."""
    try:
        check_calendar_grammar(expression)
    except ValueError as error:
        raise ValueError(f'must be an OnCalendar expression systemd accepts, like "daily" or "Mon..Fri *-*-* 03:00" ({error})') from None
    refusal = systemd_refusal(expression)
    if refusal:
        raise ValueError(f"is refused by systemd-analyze calendar: {refusal}")


def systemd_refusal(expression: str) -> str:
    """systemd-analyze's complaint about the expression ('' when it accepts it, or is not installed here)."""
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        return ""
    try:
        result = subprocess.run([analyze, "calendar", "--", expression], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return "" if result.returncode == 0 else (result.stderr.strip().splitlines() or ["refused"])[-1]


def check_calendar_grammar(expression: str) -> None:
    if not expression or expression != expression.strip():
        raise ValueError("empty, or spaces around it")
    words = expression.split(" ")
    words = [word for word in words if word]
    if len(words) > 1 and (words[-1].lower() == "utc" or words[-1] in zoneinfo.available_timezones()):
        words.pop()
    if len(words) == 1 and (words[0].lower() in SHORTHANDS or re.fullmatch(r"@\d+", words[0])):
        return
    if words and words[0][:1].isalpha():
        _weekdays(words.pop(0))
    if words and ":" not in words[0]:
        _date(words.pop(0))
    if words and ":" in words[0]:
        _time(words.pop(0))
    if words:
        raise ValueError(f"{words[0]!r} is none of [WEEKDAYS] [DATE] [TIME] [TIMEZONE] in that order")


def _weekdays(text: str) -> None:
    for item in text.split(","):
        names = item.split("..")
        numbers = [_weekday(name) for name in names]
        if len(numbers) > 2 or numbers != sorted(numbers):
            raise ValueError(f"weekdays {item!r}: use a day, a list Mon,Wed or a range Mon..Fri")


def _weekday(name: str) -> int:
    lowered = name.lower()
    for number, day in enumerate(WEEKDAYS):
        if lowered in (day, day[:3]):
            return number
    raise ValueError(f"{name!r} is not a weekday (Mon..Sun or Monday..Sunday)")


def _date(text: str) -> None:
    match = DATE.fullmatch(text)
    if not match:
        raise ValueError(f"date {text!r}: use [YEAR-]MONTH-DAY (or MONTH~DAY for days before the month's end)")
    year, month, _, day = match.groups()
    if year is not None:
        _values(year, "year", 1970, 2199, year=True)
    _values(month, "month", 1, 12)
    _values(day, "day", 1, 31)


def _time(text: str) -> None:
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"time {text!r}: use HOUR:MINUTE[:SECOND]")
    _values(parts[0], "hour", 0, 23)
    _values(parts[1], "minute", 0, 59)
    if len(parts) == 3:
        _values(parts[2], "second", 0, 59, fraction=True)


def _values(text: str, what: str, low: int, high: int, fraction: bool = False, year: bool = False) -> None:
    """A list of `*`, N, N..M, N/STEP or N..M/STEP, within low..high (two-digit years are 19xx or 20xx)."""
    number = r"\d+(?:\.\d+)?" if fraction else r"\d+"
    for item in text.split(","):
        if item == "*":
            continue
        match = re.fullmatch(rf"({number})(?:\.\.({number}))?(?:/({number}))?", item)
        if not match:
            raise ValueError(f"{what} {item!r}: use *, N, N..M, N/STEP or a comma list of them")
        start, end, step = (None if value is None else float(value) for value in match.groups())
        if year:
            start, end = (value if value is None or value >= 100 else value + (1900 if value >= 70 else 2000) for value in (start, end))
        for value in (start, end):
            if value is not None and not low <= value < high + 1:
                raise ValueError(f"{what} {item!r}: must be from {low} to {high}")
        if end is not None and end < start:
            raise ValueError(f"{what} {item!r}: a range goes upwards")
        if step is not None and not 0 < step <= high - low:
            raise ValueError(f"{what} {item!r}: a repetition must be from 1 to {high - low}")
