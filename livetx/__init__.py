"""livetx: a real-time voice conversation server speaking the AstrBot Live API."""

__version__ = "0.1.0"
