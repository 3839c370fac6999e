"""Measure -> report: pruned variants, counts, latency backends, ONNX export, the report, formats, plots, regression."""
