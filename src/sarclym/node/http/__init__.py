"""The node's HTTP side.

The dashboard (``dashboard``: routes; ``auth``: login and sessions; ``pages`` and ``views``:
HTML) and the Prometheus metrics (``metrics``).
"""
