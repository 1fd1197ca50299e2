"""After go-live: final diagnoses fed back, running concordance by model version, input drift
against the training cases, and the stop rule.
"""
