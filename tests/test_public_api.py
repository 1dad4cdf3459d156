"""The public surface: what `import tidesync` offers is declared, documented and importable."""

from __future__ import annotations

import tidesync
import tidesync.errors


def test_every_name_in_all_exists_and_is_documented():
    for name in tidesync.__all__:
        obj = getattr(tidesync, name)
        if callable(obj) and not isinstance(obj, type(tidesync.Mixed)):
            assert (obj.__doc__ or "").strip(), f"tidesync.{name} has no docstring"


def test_every_error_is_exported_and_rooted_in_tidesync_error():
    for name in tidesync.errors.__all__:
        cls = getattr(tidesync.errors, name)
        assert issubclass(cls, tidesync.TidesyncError)
        assert getattr(tidesync, name) is cls
        assert cls.code


def test_the_error_tree_is_drawn_in_one_place():
    doc = tidesync.errors.__doc__ or ""
    for name in tidesync.errors.__all__:
        assert name in doc, f"{name} is missing from the tree in tidesync/errors.py"


def test_the_package_is_typed():
    import importlib.resources

    assert importlib.resources.files("tidesync").joinpath("py.typed").is_file()
