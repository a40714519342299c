"""Raw video + text queries -> moments: the `video-moment-retrieval` pipeline (`pipeline.py`), sliding windows for
videos longer than the model's clip limit (`sliding_windows.py`), the saliency plot (`plotting.py`) and the
`lddetr-predict` command (`predict.py`)."""
