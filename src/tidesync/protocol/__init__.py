"""The sync protocol, sans-I/O: shared by the device, the server and device-to-device sync.

Layers, bottom up:

* :mod:`~.messages` -- the messages, frozen and validated; :mod:`~.codes` -- error codes.
* :mod:`~.codec` -- messages to payloads and back (msgpack envelope, limits, compression).
* :mod:`~.states` -- the connection state machine, as tables.
* :mod:`~.link` -- :class:`Link`: payloads in, events and payloads out; heartbeats.
* :mod:`~.replica` -- :class:`Replica`: what replication reads and writes through.
* :mod:`~.replicator` -- :class:`Replicator`: messages and results in, actions out.

Nothing here does I/O, reads the clock or starts a thread: drivers do (``docs/protocol.md``).
"""

from __future__ import annotations

from .actions import *  # noqa: F403
from .actions import __all__ as _actions_all
from .codec import *  # noqa: F403
from .codec import __all__ as _codec_all
from .codes import *  # noqa: F403
from .codes import __all__ as _codes_all
from .events import *  # noqa: F403
from .events import __all__ as _events_all
from .link import *  # noqa: F403
from .link import __all__ as _link_all
from .messages import *  # noqa: F403
from .messages import __all__ as _messages_all
from .replica import *  # noqa: F403
from .replica import __all__ as _replica_all
from .replicator import *  # noqa: F403
from .replicator import __all__ as _replicator_all
from .states import Role, State

__all__ = [
    *_actions_all, *_codec_all, *_codes_all, *_events_all, *_link_all, *_messages_all,
    *_replica_all, *_replicator_all, "Role", "State",
]
