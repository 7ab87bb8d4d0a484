"""pip install of monolith_tf. Builds the op library and the core extension
with g++ against the TensorFlow installed in the running interpreter, so
install or build without build isolation:

    pip install --no-build-isolation .
    pip wheel --no-build-isolation --no-deps -w dist .     # what `make wheel` runs

The op library only loads into the TensorFlow it was compiled against, so
the package's version carries that TensorFlow as a local tag
(``0.1.0+tf2.21.0``) and requires exactly it. tf_keras and
tensorflow-recommenders (TFRS models) and confluent-kafka (the Kafka log)
are extras: ``monolith_tf[tfrs,kafka]``.

An editable install (``pip install -e .``, which `make` does into .venv)
uses the libraries `make native` built in place and builds nothing.
``MONOLITH_BUILD_DIR`` names make's build directory (default build/setup).
"""

import os
import subprocess
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"


class BuildNativeThenPython(build_py):
    """Runs `make native` (g++, tf.sysconfig flags) before copying the package."""

    def run(self):
        if not getattr(self, "editable_mode", False):
            subprocess.check_call(
                ["make", "native", "USE_VENV=0", f"PY={sys.executable}",
                 f"BUILD={os.environ.get('MONOLITH_BUILD_DIR', 'build/setup')}"], cwd=ROOT)
        super().run()


class BinaryDistribution(Distribution):
    """The package ships compiled libraries, so wheels are platform-specific."""

    def has_ext_modules(self):
        return True


def pinned(names):
    """The requirements.txt lines of ``names`` (one pin per package, kept there)."""
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        lines = [line.split("#")[0].strip() for line in f]
    return [line for line in lines
            if line and line.split("=")[0].split(">")[0].split("<")[0] in names]


def tensorflow_version():
    """The TensorFlow the op library is built against: the installed one."""
    import tensorflow as tf

    return tf.__version__


TF_VERSION = tensorflow_version()

setup(
    name="monolith_tf",
    version=f"{VERSION}+tf{TF_VERSION}",
    description="Real-time recommendation training for TensorFlow with a collisionless "
                "embedding table",
    packages=find_packages(include=["monolith_tf", "monolith_tf.*"]),
    package_data={"monolith_tf": ["*.so"]},
    python_requires=">=3.11",
    install_requires=[f"tensorflow=={TF_VERSION}"] + pinned({"numpy"}),
    extras_require={"tfrs": pinned({"tf-keras", "tensorflow-recommenders"}),
                    "kafka": pinned({"confluent-kafka"}),
                    "serving": pinned({"tensorflow-serving-api", "aiohttp",
                                       "prometheus_client"})},
    cmdclass={"build_py": BuildNativeThenPython},
    distclass=BinaryDistribution,
    zip_safe=False,
)
