"""The reference pipeline: workers for the host's three queues (DESIGN §2).

For the demo, the tests and operators without workers of their own:

- :mod:`retro.pipeline.analysis` — pre-match analysis from past results (pure);
- :mod:`retro.pipeline.models` — 42 deterministic baseline statistical models (pure);
- :mod:`retro.pipeline.scoring` — the Kicktipp quota rule for settlement (pure);
- :mod:`retro.pipeline.host` (with :mod:`~retro.pipeline.host_rows` and
  :mod:`~retro.pipeline.host_settlement`) — the writes to the host's tables;
  retro itself only reads them, so they live here and not in :mod:`retro.store`;
- :mod:`retro.pipeline.stages` — each stage's database work, idempotent;
- :mod:`retro.pipeline.workers` — BullMQ workers consuming ``analysis-queue``,
  ``predictions-queue`` and ``settlement-queue`` with the host's payloads.
"""
