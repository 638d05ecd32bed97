"""The OnCalendar check agrees with systemd: the grammar alone, and systemd-analyze when this machine has it."""

import shutil
import subprocess

import pytest

from tasks.oncalendar import check_calendar, check_calendar_grammar, systemd_refusal

ACCEPTED = [
    'daily', 'weekly', '*-*-* 03:00', 'Mon..Fri 22:00', 'Sat,Sun *-*-1..7 12:00', '*:0/15', '*-*-* 03:00 UTC',
    '*-*-* 03:00 Europe/Berlin', 'minutely', 'quarterly', 'semiannually', '@1700000000', '03:00:00.5',
    'Mon *-*-* 00:00:00', '*-02/3-01', 'tuesday', 'Wed..Fri', '*-*-*  03:00', 'Daily', 'semi-annually', 'biannually',
    'bi-annually', 'annually', 'yearly', 'hourly', 'monthly', '24-01-01', '0024-01-01', '2199-12-31', '*-*~1',
    '*-02~03', '02~03', '12-24', 'Mon 12-24', 'Mon', 'mon,Tue..thu', 'Mon..Fri,Sun', 'Monday..Fri',
    '*-*-* 03:00:00.123456', '*-*-* 03:00:00.1234567', '*-*-* 3:0', '*-*-* 1..5/2:00', '*-*-* *:*:*', '*-*-31 00:00',
    '03:00 UTC', '03:00 utc', '03:00 CET', '@0', '@1700000000 UTC', 'Mon *-*-* 03:00 UTC', '*-*-* 03:00,15:00',
    '*-*-* 03,15:00', '2026-02-30', 'Mon..Mon', '*-1,2,3-1..5 4:5', '00:00/59', '00:00/30', '*-*-1/30', '*-1/11-1',
    '00/23:00', '*-*-* 00:00:00/59', '*-*-* 00:00:00.5/0.5', '*-*-* 00:00:00/0.5', '*-*-* 00:00:00..10.5', '99-01-01',
    '69-01-01', '70-01-01', '2026/2-01-01', '1..5-01-01', '*-*-1..31/2', '01-*', '*-01', '*-*-*', 'Mon 03:00',
    'Mon,Tue 03:00', 'Mon 2026-*-* UTC', 'daily UTC', 'weekly Europe/Berlin', '*-*-* 03:00 Etc/GMT+5',
    '*-*-* 03:00:00 Asia/Tokyo', '2026-1-1 0:0:0',
]
REFUSED = [
    '2026-*-~1', 'bogus', '*-*-* 25:00', '1..5/2', '*:*/15', '*/2:00', '1969-01-01', '2200-01-01', '*-*-* 03:00.5',
    '5..1:00', '*-*-* 00:00/0', '*-*-* 00:00/60', '*-*-* 00:00/61', '*-*-32 00:00', '*-13-01', '*-0-01', '*-*-0',
    '03:00 Europe/Nowhere', '00:00:60', '00:60', '24:00', 'Fri..Mon', '+1', '-1', '1:2:3:4', '1-2-3-4', '*-*-*T03:00',
    '*-*-1/31', '*-1/12-1', '00/24:00', '00/25:00', '*-*-* 00:00:00/60', '100-01-01', 'Mon..Fri/2', 'Mon/2', 'M',
    'Mo', 'Tues', 'Thurs', 'Mon, Tue 03:00', 'UTC', '2026-01-01 00:00:00 +0100', 'daily; touch /tmp/x',
    '$(touch /tmp/x)', '*-*-* 03:00 %n', 'Mon..Tue..Wed', 'Mon,,Tue', ' daily', 'daily ', '',
]


@pytest.mark.parametrize("expression", ACCEPTED)
def test_what_systemd_accepts_is_accepted(expression):
    check_calendar_grammar(expression)
    check_calendar(expression)


@pytest.mark.parametrize("expression", REFUSED)
def test_what_systemd_refuses_is_refused_by_the_grammar_alone(expression):
    with pytest.raises(ValueError, match="must be an OnCalendar expression systemd accepts"):
        check_calendar(expression)
    with pytest.raises(ValueError):
        check_calendar_grammar(expression)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed here")
def test_the_examples_are_what_this_machines_systemd_says():
    verdicts = {expression: subprocess.run(["systemd-analyze", "calendar", "--", expression], capture_output=True).returncode == 0
                for expression in ACCEPTED + REFUSED}
    assert [expression for expression in ACCEPTED if not verdicts[expression]] == []
    assert [expression for expression in REFUSED if verdicts[expression]] == []
    assert systemd_refusal("bogus") and not systemd_refusal("daily")
