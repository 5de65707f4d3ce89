"""Where dreamloom keeps its files, and Ray's: its sockets must fit the 107 bytes Unix allows."""

from __future__ import annotations

from dreamloom.settings import ray_temp_dir

# The longest socket path Ray makes under its temp folder (a 7-digit pid).
RAY_SOCKET = "/session_2026-12-02_17-28-19_651600_1234567/sockets/plasma_store"


def test_rays_sockets_fit_whatever_the_work_folder(tmp_path, monkeypatch):
    short = tmp_path / "h"
    monkeypatch.setenv("DREAMLOOM_HOME", str(short))
    short_ray = ray_temp_dir()
    assert len(str(short_ray) + RAY_SOCKET) <= 107
    for deep in ("a" * 40, "b" * 40):  # pytest-xdist's popen-gw0/ folders made such paths
        monkeypatch.setenv("DREAMLOOM_HOME", str(tmp_path / deep / "home"))
        folder = ray_temp_dir()
        assert len(str(folder) + RAY_SOCKET) <= 107 and folder.is_dir()
        assert folder != short_ray
    monkeypatch.setenv("DREAMLOOM_HOME", str(tmp_path / ("a" * 40) / "home"))
    first = ray_temp_dir()
    monkeypatch.setenv("DREAMLOOM_HOME", str(tmp_path / ("b" * 40) / "home"))
    assert ray_temp_dir() != first  # two work folders never share Ray's session files


def test_logs_that_are_not_a_terminal_get_rays_prefixes_without_colour_codes(monkeypatch):
    import io
    import os
    import sys

    from dreamloom.settings import apply_quiet_defaults

    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a file or a pipe
    apply_quiet_defaults()
    assert os.environ["RAY_COLOR_PREFIX"] == "0"
    monkeypatch.setenv("RAY_COLOR_PREFIX", "1")  # the user's choice wins
    apply_quiet_defaults()
    assert os.environ["RAY_COLOR_PREFIX"] == "1"
