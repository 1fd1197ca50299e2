"""Results to their destinations.

The delivery ledger in state.db (``ledger``, ``records``) and the thread that works it
(``deliverer``); what a destination confirms (``outcome``) and one module per destination kind
(``cstore``, ``stowrs``, ``orthanc``, ``folder``), built from the configuration by
``destinations``; the local Orthanc the demo and the embedded defaults use (``local_orthanc``).
"""
