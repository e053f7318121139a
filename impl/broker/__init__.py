"""The osqueue broker: an HTTP and WebSocket service in front of the group-commit engine.

``Broker`` runs the election and the engine, ``create_app`` builds the ASGI application,
``serve`` runs both with Hypercorn, and ``load_settings`` reads the configuration. See
docs/broker.md.
"""

from osqueue.broker.app import create_app
from osqueue.broker.config import BrokerSettings, load_settings
from osqueue.broker.server import serve
from osqueue.broker.service import Broker

__all__ = ["Broker", "BrokerSettings", "create_app", "load_settings", "serve"]
