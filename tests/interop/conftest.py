"""TensorFlow for the interop tests: a test-only dependency (the ``dev`` extra), imported lazily.

``torch._dynamo`` is imported first: it loads triton's bundled LLVM, which segfaults when TensorFlow's was
loaded before it (the converter reaches dynamo through meta-device initialisation)."""

import os

import pytest
import torch._dynamo  # noqa: F401

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def tf():
    """TensorFlow, with its thread pools sized like torch's (the tests share a small machine). Missing
    TensorFlow skips on a developer's machine and fails under CI, where ``make test`` installs it."""
    if os.environ.get("CI"):
        import tensorflow
    else:
        tensorflow = pytest.importorskip("tensorflow")
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads:
        try:
            tensorflow.config.threading.set_intra_op_parallelism_threads(threads)
            tensorflow.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # already initialised by an earlier test
            pass
    return tensorflow


@pytest.fixture(scope="session")
def written(tf, tmp_path_factory):
    """r50_1x_sk0 and r50_1x_sk1 reference networks: TensorFlow's outputs and their TF1/TF2 checkpoints."""
    from parity import Written

    root = tmp_path_factory.mktemp("tf")
    return {arch: Written(tf, root, arch) for arch in ("r50_1x_sk0", "r50_1x_sk1")}
