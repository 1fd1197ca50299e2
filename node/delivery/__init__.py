"""Results to their destinations.

The delivery ledger and deliverer (``ledger``), the destination kinds (``destinations``) and the
local Orthanc the demo and the embedded defaults use (``local_orthanc``).
"""
