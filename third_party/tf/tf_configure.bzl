"""Repository rule exposing the installed TensorFlow pip package to Bazel.

Runs the configured Python (PYTHON_BIN_PATH, default python3) to ask
tf.sysconfig for the include and library directories, then symlinks them
into an external repository with two targets: tf_header_lib and
libtensorflow_framework.
"""

_BUILD = """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "tf_header_lib",
    hdrs = glob(["include/**"]),
    includes = ["include"],
    defines = ["_GLIBCXX_USE_CXX11_ABI=1", "EIGEN_MAX_ALIGN_BYTES=64"],
)

cc_library(
    name = "libtensorflow_framework",
    srcs = ["lib/libtensorflow_framework.so.2"],
)
"""

def _python(ctx):
    return ctx.os.environ.get("PYTHON_BIN_PATH", "python3")

def _ask(ctx, expression):
    result = ctx.execute([_python(ctx), "-c", "import tensorflow as tf; print(%s)" % expression])
    if result.return_code != 0:
        fail("could not import tensorflow with %s: %s" % (_python(ctx), result.stderr))
    return result.stdout.strip().splitlines()[-1]

def _tf_configure_impl(ctx):
    ctx.symlink(_ask(ctx, "tf.sysconfig.get_include()"), "include")
    ctx.symlink(_ask(ctx, "tf.sysconfig.get_lib()"), "lib")
    ctx.file("BUILD", _BUILD)

tf_configure = repository_rule(
    implementation = _tf_configure_impl,
    environ = ["PYTHON_BIN_PATH"],
)
