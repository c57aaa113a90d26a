"""Build segrt: the root folders join one import namespace, ``segrt``.

``kernels/`` becomes ``segrt.kernels`` and so on (``package_dir``), and the C++ sources in
``cpp/`` are compiled into the pybind11 extension ``segrt.kernels._C``. OpenMP is used
where the compiler accepts it; otherwise the extension is built single-threaded.
"""
import os
import runpy
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup
from setuptools.command.build_ext import build_ext

try:
    from pybind11.setup_helpers import Pybind11Extension
except ImportError:  # only during metadata-only steps; build isolation provides pybind11
    from setuptools import Extension as Pybind11Extension

HERE = os.path.dirname(os.path.abspath(__file__))

# one list for the installed package and the source-checkout shim (segrt/_checkout.py)
SUBPACKAGES = runpy.run_path(os.path.join(HERE, "segrt", "_subpackages.py"))["SUBPACKAGES"]

packages = ["segrt"]
package_dir = {"segrt": "segrt"}
for name in SUBPACKAGES:
    for root, dirs, files in os.walk(os.path.join(HERE, name)):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        if "__init__.py" not in files:
            continue
        rel = os.path.relpath(root, HERE)
        pkg = "segrt." + rel.replace(os.sep, ".")
        packages.append(pkg)
        package_dir[pkg] = rel

# cpp/module.cpp (the one PYBIND11_MODULE) and every op's sources in cpp/<op>/
CPP_SOURCES = sorted(
    os.path.relpath(os.path.join(root, f), HERE)
    for root, _, files in os.walk(os.path.join(HERE, "cpp")) for f in files if f.endswith(".cpp")
)


def _compiler_accepts(compiler_cmd, flag):
    """True when the C++ compiler builds a tiny OpenMP program with ``flag``."""
    src = "#include <omp.h>\nint main(){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.cpp")
        with open(path, "w") as f:
            f.write(src)
        try:
            r = subprocess.run(
                [compiler_cmd, flag, path, "-o", os.path.join(tmp, "probe")],
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return r.returncode == 0


def _find_clipper():
    """Include and library folders of libpolyclipping (Clipper 6.4), or None.

    Debian / Ubuntu: apt install libpolyclipping-dev; conda: conda install polyclipping.
    SEGRT_NO_CLIPPER=1 builds without it.
    """
    if os.environ.get("SEGRT_NO_CLIPPER", "") in ("1", "true", "yes"):
        return None
    prefixes = [os.environ.get("CONDA_PREFIX", ""), sys.prefix, "/usr/local", "/usr"]
    for prefix in filter(None, prefixes):
        inc = os.path.join(prefix, "include")
        if not os.path.exists(os.path.join(inc, "polyclipping", "clipper.hpp")):
            continue
        for libdir in ("lib", "lib64", os.path.join("lib", "x86_64-linux-gnu"), os.path.join("lib", "aarch64-linux-gnu")):
            d = os.path.join(prefix, libdir)
            if any(f.startswith("libpolyclipping.") for f in (os.listdir(d) if os.path.isdir(d) else [])):
                return inc, d
    return None


class BuildExt(build_ext):
    """Adds OpenMP flags when the compiler supports them (SEGRT_NO_OPENMP=1 disables) and
    links libpolyclipping when it is installed."""

    def build_extensions(self):
        compiler = self.compiler.compiler_cxx[0] if getattr(self.compiler, "compiler_cxx", None) else None
        use_omp = False
        if os.environ.get("SEGRT_NO_OPENMP", "") not in ("1", "true", "yes"):
            if compiler and shutil.which(compiler) and sys.platform != "win32":
                use_omp = _compiler_accepts(compiler, "-fopenmp")
        clipper = _find_clipper()
        for ext in self.extensions:
            if use_omp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
            ext.define_macros.append(("SEGRT_HAVE_OPENMP", "1" if use_omp else "0"))
            ext.define_macros.append(("SEGRT_HAVE_CLIPPER", "1" if clipper else "0"))
            if clipper:
                ext.include_dirs.append(clipper[0])
                ext.library_dirs.append(clipper[1])
                ext.runtime_library_dirs.append(clipper[1])
                ext.libraries.append("polyclipping")
        super().build_extensions()


ext_modules = [
    Pybind11Extension(
        "segrt.kernels._C",
        CPP_SOURCES,
        include_dirs=["cpp"],
        cxx_std=17,
        # -ffp-contract=off: no fused multiply-adds, so float results match peers bit for bit
        extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"],
    )
]

setup(
    packages=packages,
    package_dir=package_dir,
    # the demo models travel with the package (each under 1 MB), with their cards
    package_data={"segrt.models": ["*.onnx", "*.metrics.json", "README.md"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExt},
)
