"""Encryption at rest with SQLCipher: real files, bytes on disk inspected directly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tidesync.errors import CorruptFileError, EncryptionError, MissingExtraError, StorageError, UsageError
from tidesync.store.engine import KEY_SIZE, Engine, _hkdf_sha256, derive_sqlcipher_key
from tests.helpers.extras import needs_sqlcipher


KEY = bytes(range(KEY_SIZE))
OTHER_KEY = bytes(reversed(KEY))
MARKER = b"TIDESYNC-PLAINTEXT-MARKER"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "secret.db"


def file_set(path: Path) -> dict[str, bytes]:
    """The bytes of the database file and its -wal and -shm sidecars, by suffix."""
    return {suffix: Path(f"{path}{suffix}").read_bytes()
            for suffix in ("", "-wal", "-shm") if Path(f"{path}{suffix}").exists()}


def write_markers(engine: Engine) -> None:
    engine.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    engine.execute("CREATE INDEX notes_body ON notes (body)")
    with engine.atomic():
        engine.executemany("INSERT INTO notes (body) VALUES (?)",
                           ((f"{MARKER.decode()} {i}",) for i in range(200)))


@pytest.fixture
def encrypted_file(db_path: Path) -> Path:
    with Engine(db_path, encryption_key=KEY) as e:
        write_markers(e)
    return db_path


# -- the key -----------------------------------------------------------------------------------


def test_hkdf_matches_rfc5869_test_vectors() -> None:
    # RFC 5869 appendix A, test cases 1 and 3 (SHA-256).
    okm = _hkdf_sha256(bytes([0x0B] * 22), salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA)), length=42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")
    okm = _hkdf_sha256(bytes([0x0B] * 22), salt=b"", info=b"", length=42)
    assert okm.hex() == ("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
                         "9d201395faa4b61a96c8")


def test_derived_key_uses_all_64_bytes() -> None:
    derived = derive_sqlcipher_key(KEY)
    assert len(derived) == 32
    assert derive_sqlcipher_key(KEY) == derived
    assert derive_sqlcipher_key(KEY[:32] + bytes(32)) != derived
    assert derive_sqlcipher_key(bytes(32) + KEY[32:]) != derived


@pytest.mark.parametrize("bad_key", [KEY[:63], KEY + b"\x00", b"", KEY.hex()[:64]],
                         ids=["63 bytes", "65 bytes", "empty", "str"])
def test_key_that_is_not_64_bytes_is_a_usage_error(db_path: Path, bad_key: bytes) -> None:
    with pytest.raises(UsageError, match="64 bytes"):
        Engine(db_path, encryption_key=bad_key)
    assert not db_path.exists()


def test_missing_sqlcipher_names_the_extra(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import` fail exactly as if the package were absent.
    monkeypatch.setitem(sys.modules, "sqlcipher3", None)
    monkeypatch.setitem(sys.modules, "sqlcipher3.dbapi2", None)
    with pytest.raises(MissingExtraError) as info:
        Engine(db_path, encryption_key=KEY)
    assert "pip install tidesync[encryption]" in str(info.value)
    assert isinstance(info.value, ImportError)
    assert not db_path.exists()


# -- what reaches the disk ---------------------------------------------------------------------


def test_control_plain_database_does_show_the_marker(tmp_path: Path) -> None:
    # Proves the byte search below can find the marker when it is there: in the WAL before a
    # checkpoint, in the main file after.
    path = tmp_path / "plain.db"
    with Engine(path) as e:
        write_markers(e)
        files = file_set(path)
        assert files["-wal"] and MARKER in files["-wal"]
    assert MARKER in path.read_bytes()


@needs_sqlcipher
def test_plaintext_never_reaches_the_file_the_wal_or_the_shm(db_path: Path) -> None:
    with Engine(db_path, encryption_key=KEY) as e:
        write_markers(e)
        files = file_set(db_path)
        assert set(files) == {"", "-wal", "-shm"}
        assert len(files["-wal"]) > 4096  # the rows are in the WAL, not yet checkpointed
        for suffix, data in files.items():
            assert MARKER not in data, f"plaintext found in {db_path.name}{suffix}"
            assert b"CREATE TABLE" not in data and b"notes_body" not in data
            assert b"SQLite format 3" not in data
    for suffix, data in file_set(db_path).items():  # after close: checkpointed into the main file
        assert MARKER not in data, f"plaintext found in {db_path.name}{suffix}"
        assert KEY not in data and derive_sqlcipher_key(KEY) not in data


@needs_sqlcipher
def test_reopen_with_the_right_key(encrypted_file: Path) -> None:
    with Engine(encrypted_file, encryption_key=KEY) as e:
        assert e.query("SELECT count(*) FROM notes") == [(200,)]
        assert e.query("SELECT body FROM notes WHERE id = 1") == [(f"{MARKER.decode()} 0",)]
        assert e.query("PRAGMA journal_mode") == [("wal",)]
        assert e.query("PRAGMA mmap_size") == [(0,)]
        assert e.query("PRAGMA temp_store") == [(2,)]
    with Engine(encrypted_file, encryption_key=KEY, readonly=True) as reader:
        assert reader.query("SELECT count(*) FROM notes") == [(200,)]
    with Engine(encrypted_file, encryption_key=KEY, mmap_size=1 << 20) as e:  # never mapped, even if asked
        assert e.mmap_size == 0 and e.query("PRAGMA mmap_size") == [(0,)]
        with e.unmapped():
            assert e.query("SELECT count(*) FROM notes") == [(200,)]
        assert e.query("PRAGMA mmap_size") == [(0,)]


@needs_sqlcipher
def test_tracer_never_sees_the_key(db_path: Path) -> None:
    seen: list[str] = []
    with Engine(db_path, encryption_key=KEY, tracer=lambda sql, params: seen.append(sql)) as e:
        e.query("SELECT 1")
    assert seen[0] == "PRAGMA key = <redacted>"
    secrets = (KEY.hex(), derive_sqlcipher_key(KEY).hex())
    assert not any(s in sql.lower() for sql in seen for s in secrets)


# -- the wrong key, no key, or not a database --------------------------------------------------


@needs_sqlcipher
def test_wrong_key_is_an_encryption_error_and_changes_nothing(encrypted_file: Path) -> None:
    import sqlcipher3.dbapi2

    before = file_set(encrypted_file)
    with pytest.raises(EncryptionError, match="cannot be decrypted with this key") as info:
        Engine(encrypted_file, encryption_key=OTHER_KEY)
    assert isinstance(info.value.__cause__, sqlcipher3.dbapi2.DatabaseError)
    assert file_set(encrypted_file) == before
    with Engine(encrypted_file, encryption_key=KEY) as e:  # still opens with the right key
        assert e.query("SELECT count(*) FROM notes") == [(200,)]


@needs_sqlcipher
def test_missing_key_for_an_encrypted_file_is_an_encryption_error(encrypted_file: Path) -> None:
    before = file_set(encrypted_file)
    with pytest.raises(EncryptionError, match="no encryption key was given"):
        Engine(encrypted_file)
    assert file_set(encrypted_file) == before


@needs_sqlcipher
def test_key_for_a_plain_file_is_an_encryption_error(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    with Engine(path) as e:
        write_markers(e)
    before = file_set(path)
    with pytest.raises(EncryptionError, match="not encrypted, but an encryption key was given"):
        Engine(path, encryption_key=KEY)
    assert file_set(path) == before


@pytest.mark.parametrize("key", [None, pytest.param(KEY, marks=needs_sqlcipher)], ids=["no key", "key"])
@pytest.mark.parametrize("content", [b"hi", b"hello, this is a text file\n" * 300, b"\x89PNG\r\n\x1a\n" + bytes(5000)],
                         ids=["tiny", "text", "binary"])
def test_a_file_that_is_not_a_database_is_a_corrupt_file_error(tmp_path: Path, key: bytes | None,
                                                                content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match="not a tidesync database"):
        Engine(path, encryption_key=key)
    assert path.read_bytes() == content


@needs_sqlcipher
def test_a_tampered_page_is_a_corrupt_file_error_not_garbage(encrypted_file: Path) -> None:
    data = bytearray(encrypted_file.read_bytes())
    assert len(data) >= 3 * 4096
    for page_start in range(4096, len(data), 4096):  # one bit in every page but the first
        data[page_start + 100] ^= 0x01
    encrypted_file.write_bytes(bytes(data))
    with Engine(encrypted_file, encryption_key=KEY) as e:  # page 1 is intact, so it opens
        with pytest.raises(StorageError) as info:
            e.query("SELECT body FROM notes")
        assert isinstance(info.value, CorruptFileError)


# -- several connections -----------------------------------------------------------------------


@needs_sqlcipher
def test_data_version_changes_after_another_encrypted_connection_commits(encrypted_file: Path) -> None:
    with Engine(encrypted_file, encryption_key=KEY) as mine, Engine(encrypted_file, encryption_key=KEY) as theirs:
        before = mine.data_version()
        mine.execute("INSERT INTO notes (body) VALUES ('mine')")
        assert mine.data_version() == before
        theirs.execute("INSERT INTO notes (body) VALUES ('theirs')")
        assert mine.data_version() != before
        assert mine.query("SELECT count(*) FROM notes") == [(202,)]

