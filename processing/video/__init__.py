"""Video file -> per-clip features: PyAV decoding into clips (`decoding.py`), CLIP image and text encoders
(`clip_encoders.py`), the on-disk feature cache (`feature_cache.py`), the dtype they compute in (`precision.py`), a
background-thread iterator (`prefetch.py`) and `VideoFeaturizer`, which combines them (`featurizer.py`)."""
