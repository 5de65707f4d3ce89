"""Progress output that reads well in a terminal and in a log file."""

import io

from dreamloom.progress import Progress, StatusLine


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_status_line_rewrites_itself_on_a_terminal_and_writes_few_whole_lines_to_a_log():
    terminal = Terminal()
    status = StatusLine(stream=terminal)
    for second in range(48):
        status.show(f"waiting: {second} s")
    status.close()
    assert terminal.getvalue().count("\r") == 48 and terminal.getvalue().endswith("waiting: 47 s\n")

    log = io.StringIO()  # a file or a pipe: what `dreamloom serve > serve.log` writes into
    status = StatusLine(interval_s=3600, stream=log)
    for second in range(48):
        status.show(f"waiting: {second} s")
    status.close()
    assert log.getvalue() == "waiting: 0 s\nwaiting: 47 s\n"  # the first and the last, no carriage returns


def test_progress_lines_carry_the_bar_the_count_and_the_rate(capsys):
    progress = Progress(total=4, description="train", min_interval_s=0)
    for _ in range(4):
        progress.update(loss=0.5)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[-1].startswith("[train] ████████████████████ 4/4 (100%) loss 0.5 |")
    assert "done" in lines[-1] and "\r" not in "".join(lines)
