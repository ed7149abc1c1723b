"""QS-Net in JAX: synthesize T1w, T2w, T1-FLAIR, T2-FLAIR and SWI from MRF maps."""

from setuptools import find_packages, setup

# The set checked together on Python 3.11 (CPU). GPU / TPU users add an extra below.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-cpu==2.21.0",
    "tensorboard==2.21.0",
    "tensorflow-datasets==4.9.10",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "clu==0.0.12",
    "dm-pix==0.4.5",
    "nibabel==5.4.2",
    "numpy==2.4.6",
    "scipy",
    "scikit-image==0.26.0",
    "matplotlib==3.11.2",
    "nilearn==0.14.1",
]

EXTRAS_REQUIRE = {
    "test": ["pytest==9.2.0", "ruff", "nbclient", "nbformat", "ipykernel"],
    "gpu": ["jax[cuda12]==0.10.2"],
    "tpu": ["jax[tpu]==0.10.2"],
}

setup(
    name="qsnet-jax",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["qsnet_jax*", "data_pipelines*", "workflow*", "experiments*",
                                    "configs*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    license="Apache-2.0",
)
