"""The streamkd daemon: ``streamkd serve`` (a learner beside a live source, with an HTTP API),
``streamkd inspect`` (what a checkpoint folder holds) and their parts."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

from streamkd.serve.config import ServeConfig, load_config

__all__ = ["ServeConfig", "load_config", "serve"]
log = logging.getLogger(__name__)


def _server_class():
    import uvicorn

    class DaemonServer(uvicorn.Server):
        """SIGTERM/SIGINT end the daemon normally: a final checkpoint, then exit 0. uvicorn's
        own handlers re-raise the signal after the graceful shutdown (exit -15); these only
        ask the server to stop (a second SIGINT forces it), and restore the previous ones."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def stop(sig, frame) -> None:
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True
                self.should_exit = True

            previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

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
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            limit_concurrency=config.max_connections,  # beyond: 503 at once, not a queue
        )
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
