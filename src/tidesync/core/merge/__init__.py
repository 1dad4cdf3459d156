"""The pure merge core: how operations and states of one document combine.

Entry points: :func:`integrate` (one operation), :func:`integrate_all`, and :func:`join`
(two states). Writers read :func:`epochs`, :func:`list_element_ids` and
:func:`container_kind` to build operations, and mint list element ids with
:func:`new_element_id`. Everything here is deterministic and does no I/O: replicas that
integrate the same operations, in any order and with any repetition, hold equal states.
The rules, and how they map to Device Sync's, are in ``docs/merge-rules.md``.

Modules: :mod:`.state` (DocState, keys, meta layout), :mod:`.document` (incarnations and
dispatch), :mod:`.create` (CreateDoc, fast path), :mod:`.registers` (fields, epochs,
placeholders), :mod:`.sequence` (lists), :mod:`.collections` (sets, dictionaries),
:mod:`.counters`, :mod:`.policies`, :mod:`.conflicts`, :mod:`.join`, :mod:`.canonical`.
"""

from .canonical import canonical_meta, canonical_state, latest_stamp, stamps_of
from .conflicts import Conflict
from .create import compact_key, overlay_write
from .document import container_kind, epochs, integrate, integrate_all, list_element_ids, list_positions
from .join import join
from .policies import POLICY_NAMES, Policies, Policy, PolicyFunction, value_order_key
from .state import DocState, new_element_id, new_state

__all__ = [
    "DocState",
    "new_state",
    "integrate",
    "integrate_all",
    "join",
    "epochs",
    "list_element_ids",
    "list_positions",
    "container_kind",
    "new_element_id",
    "Conflict",
    "Policies",
    "Policy",
    "PolicyFunction",
    "POLICY_NAMES",
    "value_order_key",
    "canonical_meta",
    "canonical_state",
    "latest_stamp",
    "stamps_of",
    "compact_key",
    "overlay_write",
]
