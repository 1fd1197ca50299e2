"""sarclym-node's imaging side: series to SUV volume, MIPs, the CNN, Grad-CAM, training,
the model registry and the synthetic FDG PET/CT cohort generator.

Knows nothing of networking. Research use only - not for diagnosis.
"""

__all__: list[str] = []
