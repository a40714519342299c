"""Hub datasets for LD-DETR: the builder (`lddetr-build-dataset`), loading, publishing, and the embedded demo data."""

from .hub import load_lddetr_dataset, push_dataset_to_hub

__all__ = ["load_lddetr_dataset", "push_dataset_to_hub"]
