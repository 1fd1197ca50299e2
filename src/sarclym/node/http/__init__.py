"""The node's HTTP side: one server (``server``: liveness, readiness, metrics, STOW-RS,
dashboard), STOW-RS receive (``stow``), the dashboard (``dashboard``: routes; ``auth``: login
and sessions; ``pages`` and ``views``: HTML) and the Prometheus metrics (``metrics``).
"""
