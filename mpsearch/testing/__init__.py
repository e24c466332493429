"""Test doubles shipped with the package (as ``optuna.testing`` does): a tiny residual CNN, synthetic
data factories, a :class:`TableBackend` whose costs come from a known formula instead of TVM, and the
conformance suite every backend passes (:mod:`mpsearch.testing.backend_suite`, which needs pytest: import
it from a test)."""

from mpsearch.testing.backends import TableBackend, table_backend_factory
from mpsearch.testing.tiny import TinyResNet, synthetic_split, tiny_resnet, tiny_run_config

__all__ = ["TableBackend", "TinyResNet", "synthetic_split", "table_backend_factory", "tiny_resnet", "tiny_run_config"]
