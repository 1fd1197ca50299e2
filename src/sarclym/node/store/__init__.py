"""The node's state on disk, and the one owner of state.db (or of its PostgreSQL database).

``state`` (:class:`~sarclym.node.store.state.StateDB`: the connection, transactions, versioned
schema, recording instances and series), ``reads`` (the named reads of instances and series),
``database`` (the one connection, SQLite or PostgreSQL, through SQLAlchemy: rows, locks, column
words), ``schema`` (every table's migrations), ``records`` (the typed rows and the lifecycle
enums), ``audit`` (the audit log), ``deliveries`` (the delivery ledger's tables), ``retention``
(pruning the spool), ``spool`` (received instances), ``durable`` (durable file writes) and
``layout`` (what lives in the data folder). No SQL is written outside this package.
"""
