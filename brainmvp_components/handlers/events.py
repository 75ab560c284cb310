"""Base of the handlers that run on one named ignite event."""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events

__all__ = ["EventHandler", "ignite_event"]


def ignite_event(name: str):
    try:
        return Events[name.upper()]
    except KeyError as err:
        raise ValueError(f"unknown ignite event {name!r}; use e.g. 'completed' or 'epoch_completed'") from err


class EventHandler:
    """Base of handlers called on one ignite event (an event name such as ``"completed"``), logging to the
    engine's logger unless ``name`` names another."""

    def __init__(self, event: str, name: str | None) -> None:
        self.event = ignite_event(event)
        self._name = name
        self.logger = logging.getLogger(name)

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(self.event, self)
