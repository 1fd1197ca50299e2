"""DICOM networking.

The C-STORE SCP (``listener``), Part 10 file meta and header parsing (``part10``), the C-STORE
SCU (``send``).
"""
