"""A site's labelled cases: labels files keyed by accession number, study UID or patient and date;
the case store; pulling studies from a PACS (DIMSE or DICOMweb); pseudonymisation.
"""
