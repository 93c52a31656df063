"""Persistence: the host's tables (read), retro's own run log and projection (read-write).

Only this package imports SQLAlchemy, apart from the reference pipeline's host-table writers
(:mod:`retro.pipeline.host`), which stand in for the host's own workers.
"""
