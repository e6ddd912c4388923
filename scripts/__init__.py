"""Command-line helpers: table sweeps (``*.sh``), report and docs (``python -m scripts.X``)."""
