"""rtis: a real-time, event-driven information system in one Python process."""

__version__ = "0.1.0"
