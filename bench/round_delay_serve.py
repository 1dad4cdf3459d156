"""``python -m bench.round_delay_serve SECONDS ARGS...``: ``python -m tidesync ARGS...`` with
``[sync.flexible] max_round_delay`` set to SECONDS while the server stays in development mode
(a config file would end it, and with it the open scope the routing benchmark's writer uses).

``python -m bench flexible --only routing --round-delay SECONDS`` starts its server this way,
to measure what the setting does; such a run never writes bench/RESULTS.md.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    delay, args = float(argv[0]), argv[1:]
    from tidesync.server import flexible

    config_for = flexible.config_for

    def tuned(state: object) -> flexible.FlexibleConfig | None:
        cfg = config_for(state)  # type: ignore[arg-type]
        if cfg is not None:
            cfg.max_round_delay = delay
        return cfg

    flexible.config_for = tuned  # type: ignore[assignment]
    from tidesync.cli.main import main as cli_main

    sys.argv = ["tidesync", *args]
    raise SystemExit(cli_main(args))


if __name__ == "__main__":
    main(sys.argv[1:])
