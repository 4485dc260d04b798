"""``linalign serve``: an OpenAI-compatible HTTP server whose requests carry
their own principle, decoded by one batched engine (see :mod:`.scheduler`).

    app.py        the routes
    schema.py     request bodies -> SamplingOptions, OpenAI error bodies
    scheduler.py  the waiting queue on the engine loop (the one thread that steps the engine)
    cli.py        the command line
"""
from .app import create_app
from .cli import main
from .scheduler import QueueFullError, Scheduler

__all__ = ["create_app", "main", "QueueFullError", "Scheduler"]
