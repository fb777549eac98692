"""The benchmark harness (``python bench/run.py``); not part of the installed package."""
