"""Other formats in and out: TensorFlow checkpoints (the official SimCLRv2 models), the published models.

- :mod:`~simclrv2.interop.tensorbundle`: the TensorBundle file format, no model knowledge, no TensorFlow.
- :mod:`~simclrv2.interop.official`: official variable names <-> our state-dict keys (SPEC §8).
- :mod:`~simclrv2.interop.convert`: detection, mapping and the streamed conversion to our checkpoints.
- :mod:`~simclrv2.interop.zoo`: the published models, their cache, download and ``zoo:`` references.

Models are built through the registry and written as our checkpoints; nothing here imports the engine.
"""

from simclrv2.interop.tensorbundle import BundleError, TensorBundle, find_bundle_prefix

__all__ = ["BundleError", "TensorBundle", "find_bundle_prefix"]
