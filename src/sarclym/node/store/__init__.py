"""The node's state on disk, and the one owner of state.db.

``state`` (:class:`~sarclym.node.store.state.StateDB`: the connection, transactions, versioned
schema, instances and series), ``schema`` (every table's migrations), ``records`` (the typed rows
and the lifecycle enums), ``audit`` (the audit log), ``deliveries`` (the delivery ledger's
tables), ``retention`` (pruning the spool), ``spool`` (received instances), ``durable`` (durable
file writes) and ``layout`` (what lives in the data folder). No SQL is written outside this
package.
"""
