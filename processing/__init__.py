"""Everything around the model that is not the model: `video/` (video file -> clip features), `evaluation/` (the
official metrics), `inference/` (the `video-moment-retrieval` pipeline and `lddetr-predict`), and `cache_dir.py`
(`$LDDETR_CACHE`)."""
