"""Synthetic FDG PET/CT cohort (sarcoidosis vs lymphoma) for tests, demos and default weights."""
