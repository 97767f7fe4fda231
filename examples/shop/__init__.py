"""The order saga's participants and its local step, for the README's quick start.

``python -m shop`` serves ``inventory`` on 127.0.0.1:8001 and ``payments`` on
127.0.0.1:8002 (the addresses in ``order.yaml``) until stopped.
"""
