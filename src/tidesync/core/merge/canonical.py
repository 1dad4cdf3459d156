"""Canonical forms of a state, for comparing states (tests, audits, snapshots).

Two replicas that integrated the same operations hold equal states, but a state created by
the fast path keeps compact meta until another operation touches it, and dictionary key
order in ``body`` follows arrival order. The canonical forms remove both differences.
"""

from __future__ import annotations

from typing import Any

from ..values import canonical_json
from .create import expand
from .state import DocState

__all__ = ["canonical_meta", "canonical_state"]


def canonical_meta(state: DocState) -> str:
    """The state's meta, expanded if compact, as canonical JSON."""
    if "*" in state.meta:
        state = state.copy()
        expand(state)
    return canonical_json(state.meta)


def canonical_state(state: DocState) -> dict[str, Any]:
    """A plain summary of the whole state whose equality is state equality:
    ``{"epoch", "live", "body" (canonical JSON), "meta" (canonical JSON)}``."""
    return {"epoch": state.epoch, "live": state.live, "body": canonical_json(state.body),
            "meta": canonical_meta(state)}
