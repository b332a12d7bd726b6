"""uvicorn in a daemon thread of its own, serving ``app.build``; ``offer`` is the loop's
one call into it."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from matchmaker.api import MISSING, ApiError
from matchmaker.api.leader import Leader
from matchmaker.api.snapshot import Board, Observed, snapshot_of

log = logging.getLogger("matchmaker.api")


class ApiServer:
    def __init__(self, config: Any) -> None:
        try:
            import uvicorn

            from matchmaker.api.app import build
        except ImportError:
            raise ApiError(MISSING) from None
        self.board = Board()
        app = build(config, self.board)
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=config.http_bind,
                port=config.http_port,
                log_level="warning",
                log_config=None,  # the scheduler's own logging
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=1,
            )
        )
        self.where = f"{config.http_bind}:{config.http_port}"
        self.thread = threading.Thread(target=self.server.run, name="http-api", daemon=True)
        self.leader = Leader(config) if getattr(config, "serf_rpc", "") else None

    def start(self) -> ApiServer:
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started and self.thread.is_alive() and time.time() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise ApiError(f"the HTTP API cannot listen on {self.where} (is the port in use?)")
        return self

    def offer(self, scheduler: Observed) -> None:
        """Called by the loop: publishes a snapshot when one is due (cheap otherwise)."""
        now = time.time()
        if self.board.due(now):
            try:
                self.board.publish(snapshot_of(scheduler, now))
            except Exception:  # the loop must never stop for the API
                log.exception("cannot make the API's snapshot")
                self.board.next_at = now + 5

    def lead(self) -> None:
        """Called by the loop when this scheduler becomes active: a standby's API sends
        requests here (``api.leader``). In a thread: the loop never waits on the agent."""
        if self.leader is not None:
            threading.Thread(target=self.leader.lead, name="api-advert", daemon=True).start()

    def stop(self) -> None:
        if self.leader is not None:
            self.leader.resign()
        self.server.should_exit = True
        self.thread.join(timeout=5)


def start(config: Any) -> ApiServer | None:
    """The running API server, or None when ``http_port`` is 0."""
    if not getattr(config, "http_port", 0):
        return None
    server = ApiServer(config).start()
    log.info("HTTP API on http://%s:%d/", config.http_bind, config.http_port)
    return server
