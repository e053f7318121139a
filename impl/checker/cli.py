"""Placeholder: replaced by the subsystem's command module."""


def register(app) -> None:
    return None
