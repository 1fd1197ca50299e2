"""The worker's job.

A completed series to Secondary Capture and Structured Report (``processor``), and the model
registry it loads from (``registry``).
"""
