from tasks.report import HostReport, console, show_note


def test_output_is_printed_as_is_never_as_emoji_or_markup():
    with console.capture() as captured:
        show_note(HostReport("prod1"), "fingerprint 4B:CC:CD:D1 [bold]x[/bold] :smile:")
    assert "fingerprint 4B:CC:CD:D1 [bold]x[/bold] :smile:" in captured.get()
