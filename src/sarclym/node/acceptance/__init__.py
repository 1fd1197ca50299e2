"""The local acceptance test: evaluating model versions on this site's cases, the report, the
acceptance criteria, and the change record of a retrained version.
"""
