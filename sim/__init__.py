"""Deterministic simulation of osqueue in virtual time (trio)."""
