"""The tidesync sync server (needs the ``server`` extra: ``pip install tidesync[server]``)."""

from __future__ import annotations

try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
    import jwt  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on what is installed
    from ..errors import MissingExtraError

    raise MissingExtraError(f"the tidesync server needs {exc.name}: pip install 'tidesync[server]'") from exc

from .app import ServerState, create_app
from .config import ServerConfig, load_config
from .runner import RunningServer, serve_forever, start_server

__all__ = ["create_app", "ServerConfig", "ServerState", "load_config", "start_server", "RunningServer",
           "serve_forever"]
