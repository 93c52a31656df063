"""retro: finds gaps in a match-prediction pipeline and heals them, crash-safely."""

__version__ = "0.1.0"
