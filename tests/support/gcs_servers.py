"""Placeholder: server fixtures land here."""
