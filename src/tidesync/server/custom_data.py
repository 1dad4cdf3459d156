"""Custom user data: one document of the app's own data per user.

With ``[auth.custom_data] collection = "UserData"`` (and ``user_id_field``, default
``user_id``), a user's custom data is the live document of ``UserData`` whose ``user_id``
equals the user's id, as the server's store holds it: written by any client or backend that
may write it, synced like any document. Clients read it as ``user.custom_data`` (sent at login
and by ``GET /api/<app>/auth/profile``; ``user.refresh_custom_data()`` fetches it again).
Values are in the plain form (:mod:`tidesync.core.values`), which the client decodes.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .auth_config import CustomDataConfig

if TYPE_CHECKING:
    from ..store.database import Database

__all__ = ["CustomData"]


class CustomData:
    """Finds a user's custom data document in the server's store."""

    def __init__(self, backend: Database, config: CustomDataConfig | None) -> None:
        self.backend, self.config = backend, config
        if config is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", config.user_id_field):
            raise UsageError("custom_data.user_id_field must be a plain field name")

    def for_user(self, uid: str) -> dict[str, Any]:
        """The user's custom data document (plain form), or ``{}`` when there is none or none
        is configured. Blocking: call from a worker thread."""
        cfg = self.config
        if cfg is None:
            return {}
        db = self.backend
        path = f'$."{cfg.user_id_field}"'  # the field name is checked to be an identifier
        with db._lock:
            rows = db._engine.query(
                "SELECT body FROM documents WHERE collection = ? AND live = 1 AND json_extract(body, ?) = ? "
                "ORDER BY pk LIMIT 1", (cfg.collection, path, uid))
        if not rows:
            return {}
        body: dict[str, Any] = json.loads(rows[0][0])
        return body
