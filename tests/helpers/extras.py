"""Markers for tests that need one of tidesync's optional extras (``make test`` installs them;
a bare ``pip install -e .`` does not)."""

from __future__ import annotations

import importlib.util

import pytest

#: The test opens an encrypted file: it needs the ``tidesync[encryption]`` extra (sqlcipher3).
needs_sqlcipher = pytest.mark.skipif(importlib.util.find_spec("sqlcipher3") is None,
                                     reason="the tidesync[encryption] extra is not installed")
