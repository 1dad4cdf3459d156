"""tidesync.open() with an encryption key: data at rest is encrypted, key errors are typed."""

from __future__ import annotations

from pathlib import Path

import pytest

import tidesync
from tests.models import Technician

KEY = bytes(range(64))


def test_encrypted_database_round_trip_and_no_plaintext_on_disk(tmp_path):
    path = tmp_path / "secret.db"
    with tidesync.open(path, schema=[Technician], encryption_key=KEY) as db:
        with db.write():
            db.create(Technician, _id="t1", name="PLAINTEXT-MARKER-4711")
        for suffix in ("", "-wal"):
            f = Path(str(path) + suffix)
            if f.exists():
                assert b"PLAINTEXT-MARKER-4711" not in f.read_bytes()
    with tidesync.open(path, schema=[Technician], encryption_key=KEY) as db:
        assert db.get(Technician, "t1").name == "PLAINTEXT-MARKER-4711"
    assert b"PLAINTEXT-MARKER-4711" not in path.read_bytes()


def test_wrong_or_missing_key_is_a_clear_error(tmp_path):
    path = tmp_path / "secret.db"
    with tidesync.open(path, schema=[Technician], encryption_key=KEY) as db:
        with db.write():
            db.create(Technician, _id="t1", name="x")
    with pytest.raises(tidesync.EncryptionError):
        tidesync.open(path, schema=[Technician], encryption_key=bytes(64))
    with pytest.raises(tidesync.EncryptionError):
        tidesync.open(path, schema=[Technician])
    with pytest.raises(tidesync.UsageError):
        tidesync.open(path, schema=[Technician], encryption_key=b"short")


def test_key_for_unencrypted_file_is_a_clear_error(tmp_path):
    path = tmp_path / "plain.db"
    with tidesync.open(path, schema=[Technician]):
        pass
    with pytest.raises(tidesync.EncryptionError):
        tidesync.open(path, schema=[Technician], encryption_key=KEY)
