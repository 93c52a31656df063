"""Persistence: the host's tables (read), retro's own run log and projection (read-write).

Only this package imports SQLAlchemy.
"""
