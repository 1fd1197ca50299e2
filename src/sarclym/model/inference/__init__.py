"""The network (:mod:`.net`), Grad-CAM (:mod:`.gradcam`), the :class:`~.predictor.Predictor`
that holds one loaded model version, and the :class:`~.prediction.Prediction` it hands to the
node's result builders.
"""
