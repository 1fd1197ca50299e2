"""The worker's job.

A completed series to Secondary Capture and Structured Report (``processor``), the model
version the process runs, loaded again between jobs when another is activated
(``running_model``), and the model registry it loads from (``registry``).
"""
