"""`make run`'s demo runs end to end against a real server and shows the merge."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.servers import ROOT

pytestmark = pytest.mark.slow


def test_demo_runs_once_and_shows_the_merged_state(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tidesync.demo", "--once", "--port", "0", "--data", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "DEVELOPMENT MODE" in out and "serving app 'default' at http://127.0.0.1:" in out
    merged = [line for line in out.splitlines() if "visits=2" in line]
    assert len(merged) == 2 and all("tags=['pump', 'phone', 'tablet']" in line for line in merged)
