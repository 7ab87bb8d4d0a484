"""pip install of monolith_tf. Builds the op library and the core extension
with g++ against the TensorFlow installed in the running interpreter, so
install without build isolation:

    pip install --no-build-isolation .
"""

import os
import subprocess
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = os.path.dirname(os.path.abspath(__file__))


class BuildNativeThenPython(build_py):
    """Runs `make native` (g++, tf.sysconfig flags) before copying the package."""

    def run(self):
        subprocess.check_call(
            ["make", "native", "USE_VENV=0", f"PY={sys.executable}", "BUILD=build/setup"],
            cwd=ROOT)
        super().run()


class BinaryDistribution(Distribution):
    """The package ships compiled libraries, so wheels are platform-specific."""

    def has_ext_modules(self):
        return True


def requirements():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        lines = [line.split("#")[0].strip() for line in f]
    runtime = {"tensorflow", "tf-keras", "tensorflow-recommenders", "numpy"}
    return [line for line in lines if line and line.split("=")[0].split(">")[0].split("<")[0]
            in runtime]


setup(
    name="monolith_tf",
    version="0.1.0",
    description="Real-time recommendation training for TensorFlow with a collisionless "
                "embedding table",
    packages=find_packages(include=["monolith_tf", "monolith_tf.*"]),
    package_data={"monolith_tf": ["*.so"]},
    python_requires=">=3.11",
    install_requires=requirements(),
    cmdclass={"build_py": BuildNativeThenPython},
    distclass=BinaryDistribution,
    zip_safe=False,
)
