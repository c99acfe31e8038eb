"""Progress bars: drawn on a terminal, quiet when not a TTY or in CI, forced by QCHECK_PROGRESS."""
import io
import os
import pty

import pytest

from qcheck.progress import hf_progress_env, progress, progress_bar, progress_enabled


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("QCHECK_PROGRESS", raising=False)
    return monkeypatch


def test_quiet_when_not_a_tty(clean_env):
    stream = io.StringIO()
    items = [1, 2, 3]
    assert progress_enabled(stream) is False
    assert progress(items, "scoring", stream=stream) is items
    assert stream.getvalue() == ""


def test_drawn_on_a_real_terminal(clean_env):
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as term:
        assert progress_enabled(term) is True
        assert list(progress(range(5), "scoring", stream=term)) == [0, 1, 2, 3, 4]
    os.close(leader)


def test_quiet_in_ci_even_on_a_terminal(clean_env):
    clean_env.setenv("CI", "true")
    stream = FakeTTY()
    assert progress_enabled(stream) is False
    with progress_bar("loading", total=10, stream=stream) as bar:
        bar.update(4)
        bar.set_postfix_str("tensors")
    assert bar.n == 4 and stream.getvalue() == ""
    assert hf_progress_env() == {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


def test_ci_false_does_not_silence(clean_env):
    clean_env.setenv("CI", "false")
    assert progress_enabled(FakeTTY()) is True


@pytest.mark.parametrize("value, expected", [("1", True), ("yes", True), ("0", False), ("off", False)])
def test_forced_by_qcheck_progress(clean_env, value, expected):
    clean_env.setenv("CI", "1")
    clean_env.setenv("QCHECK_PROGRESS", value)
    assert progress_enabled(io.StringIO()) is expected


def test_bar_writes_to_the_given_stream_when_enabled(clean_env):
    clean_env.setenv("QCHECK_PROGRESS", "1")
    stream = io.StringIO()
    with progress_bar("scoring windows", total=3, unit="window", stream=stream) as bar:
        bar.update(3)
    assert "scoring windows:" in stream.getvalue() and "0/3" in stream.getvalue()
