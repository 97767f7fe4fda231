"""The bad-input corpus (see ``loader.py``) and hypothesis strategies (``strategies.py``)."""
