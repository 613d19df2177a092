"""The streamkd daemon: ``streamkd serve`` (a learner beside a live source, with an HTTP API),
``streamkd inspect`` (what a checkpoint folder holds) and their parts."""

from __future__ import annotations

import logging

from streamkd.serve.config import ServeConfig, load_config

__all__ = ["ServeConfig", "load_config", "serve"]
log = logging.getLogger(__name__)


def _server_class():
    import uvicorn

    class DaemonServer(uvicorn.Server):
        """SIGTERM/SIGINT end the daemon normally: a final checkpoint, then exit 0 (uvicorn
        re-raises the signal after its graceful shutdown, which would exit -15)."""

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return DaemonServer


def serve(config: ServeConfig) -> int:
    """Run the daemon until SIGTERM/SIGINT (or, with ``stop_at_eof``, the source's end);
    returns the exit code (0 after a clean stop with its final checkpoint)."""
    import uvicorn

    from streamkd.serve.app import Service, create_app

    service = Service(config)
    app = create_app(service)
    server_class = _server_class()
    server = server_class(
        uvicorn.Config(app, host=config.host, port=config.port, log_level="warning")
    )
    app.state.server = server
    log.info(
        "serving %s on http://%s:%d, learning from %s (%s)",
        config.strategy,
        config.host,
        config.port,
        config.source,
        "resumed" if service.resumed else "fresh",
    )
    server.run()
    finished = service.stop()  # after a forced exit too (uvicorn then skips the shutdown)
    if service.learner.error is not None:
        log.error("the learner failed: %s", service.learner.error)
        return 1
    return 0 if finished else 1
