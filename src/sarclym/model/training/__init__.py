"""Training and evaluation: cross-validation and the final model (:mod:`.train`), metrics with
confidence intervals (:mod:`.evaluation`), augmentation, the MIP cache and labels files.
"""
