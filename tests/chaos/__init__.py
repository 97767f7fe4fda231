"""The chaos suite: faults injected into real processes and servers, and a checker
over the history each run leaves (``python -m tests.chaos --help``, ``make chaos``)."""
