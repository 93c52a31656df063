"""The ``retro demo`` scenario and its bundled real fixtures (DESIGN §8).

:mod:`retro.demo.fixtures` loads the 2024/25 season of five European leagues
(openfootball, CC0 public domain; see ``data/LICENSE.md``);
:mod:`retro.demo.seed` fills a host database with it, running the normal
pipeline up to an outage and leaving the outage's damage for retro to heal.
"""

from retro.demo.fixtures import Fixture, load_fixtures
from retro.demo.seed import DemoSeed, seed_demo

__all__ = ["DemoSeed", "Fixture", "load_fixtures", "seed_demo"]
