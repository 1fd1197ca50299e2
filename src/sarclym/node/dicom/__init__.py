"""DICOM networking.

The C-STORE SCP (``listener``) with the contexts it accepts (``contexts``) and the peers it
admits (``peers``); Part 10 file meta and header parsing (``part10``); the C-STORE SCU
(``send``); the DIMSE statuses of both sides on pynetdicom's tables (``status``); and the only
place that touches private pynetdicom and pydicom attributes (``compat``).
"""
