"""The official moment-retrieval and highlight-detection metrics (`metrics.py`) and their `evaluate` module
(`mr_hd_metric/`, loaded with `evaluate.load("processing/evaluation/mr_hd_metric")`)."""
