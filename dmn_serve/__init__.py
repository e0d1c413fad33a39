"""Serving a trained DMN: ``dmn-predict``, ``dmn-export`` and drawing (overlays, heatmaps, the
per-word explanation figure). Builds on ``dmn_model.Segmenter``; never imports ``dmn_train``."""
