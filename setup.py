from setuptools import find_packages, setup

setup(
    name="lddetr",
    version="0.1.0",
    description="LD-DETR (Loop Decoder DEtection TRansformer) for video moment retrieval and highlight detection, "
    "Hugging Face native.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # the two data folders are listed as packages so that setuptools ships their files without warnings
    packages=find_packages(
        include=["modeling_lddetr*", "processing*", "hub_datasets*", "training_scripts*", "video_search*", "web_demo*"]
    )
    + ["processing.evaluation.mr_hd_metric", "training_scripts.accelerate_configs"],
    include_package_data=True,
    package_data={
        "hub_datasets": ["*/README.md", "*/*.json", "*/*.jsonl", "*/LICENSE", "*/data/*"],
        "training_scripts": ["README.md"],
        "training_scripts.accelerate_configs": ["*.yaml"],
        "processing.evaluation.mr_hd_metric": ["*.py"],
    },
    install_requires=[
        "torch>=2.6",
        "transformers>=5.19,<6",
        "datasets>=4.0,<6",
        "accelerate>=1.1",
        "evaluate>=0.4.6",
        "safetensors>=0.4",
        "huggingface_hub",
        "numpy",
        "scipy",
        "pyarrow",
        "pyyaml",
        "scikit-learn",
        "tqdm",
        "av",
        "timm",
        "matplotlib",
    ],
    extras_require={
        "demo": ["gradio>=6,<7"],
        # stage 1 of video search: faiss's approximate index, or a Qdrant collection
        "search": ["faiss-cpu>=1.9", "qdrant-client>=1.12"],
        # the web-demo test drives the app in Chromium through Selenium
        "test": ["pytest", "gradio>=6,<7", "selenium>=4.20", "faiss-cpu>=1.9", "qdrant-client>=1.12", "ruff"],
    },
    entry_points={
        "console_scripts": [
            "lddetr-convert=modeling_lddetr.convert_official_checkpoint:main",
            "lddetr-build-dataset=hub_datasets.cli:main",
            "lddetr-train=training_scripts.train:main",
            "lddetr-eval=training_scripts.evaluate:main",
            "lddetr-predict-split=training_scripts.predict_split:main",
            "lddetr-predict=processing.inference.predict:main",
            "lddetr-demo=web_demo.app:main",
            "lddetr-index=video_search.index_cli:main",
            "lddetr-search=video_search.search_cli:main",
            "lddetr-eval-library=video_search.evaluate_cli:main",
        ]
    },
)
