"""A toy task on the engine's run structure (``train.py``, ``toy.yaml``): what tests/engine runs."""
