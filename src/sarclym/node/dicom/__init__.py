"""DICOM networking.

The C-STORE SCP (``listener``) with the contexts it accepts (``contexts``) and the peers it
admits (``peers``); what its connections may cost, ARTIM, pending connections, the association
count and TLS handshakes off the accepting thread (``transport``), and the PDUs it reads within
``max_pdu`` and ARTIM, A-ABORT for the rest (``pdu_reader``); each C-STORE data set bounded in
memory and a class not accepted answered 0x0122 (``store_guard``); Part 10 file meta and header
parsing (``part10``) on one walk that checks a data set is whole, with bounded inflation
(``integrity``); the C-STORE SCU (``send``); the DIMSE statuses of both sides on pynetdicom's
tables (``status``); and the only place that touches private pynetdicom and pydicom attributes
(``compat``).
"""
