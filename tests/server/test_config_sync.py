"""tidesync.toml: the [sync] table's sizes and log_keep."""

from __future__ import annotations

import pytest

from tidesync.errors import UsageError
from tidesync.server.config import load_config


def write(tmp_path, text):
    path = tmp_path / "tidesync.toml"
    path.write_text(text)
    return path


def test_sync_sizes_and_log_keep_are_read(tmp_path):
    cfg = load_config(write(tmp_path, """
[sync]
max_message_size = 1048576
max_assembled_size = 8388608
log_keep = 10000
"""))
    assert (cfg.max_message_size, cfg.max_assembled_size, cfg.log_keep) == (1 << 20, 8 << 20, 10000)
    assert load_config(write(tmp_path, "[sync]\n")).log_keep is None      # default: keep the whole log


@pytest.mark.parametrize("value", ["-1", '"100"', "1.5", "true"])
def test_a_log_keep_that_is_not_a_whole_number_is_refused(tmp_path, value):
    with pytest.raises(UsageError, match="log_keep must be a whole number"):
        load_config(write(tmp_path, f"[sync]\nlog_keep = {value}\n"))
