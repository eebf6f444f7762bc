"""Emulated devices: an arm64 Python under qemu user-mode, with the aarch64 wheels of the pinned runtimes.

An ARM runtime (``litert-arm64``, ``onnxruntime-arm64``, ``executorch-arm64`` in ``deploykit.registry``) is the
native runtime's own runner, started by the one child harness (``deploykit.child``) in an emulated arm64 process
instead of the host's Python: numpy crosses the runner boundary as .npz files, as for any child. What lives here:

* ``cores``: the ARM cores qemu emulates (``--arm-cpu``), their features and the ``/proc/cpuinfo`` each needs;
* ``userland``: the provisioned folder (qemu, an arm64 Debian sysroot, aarch64 wheels) and the child interpreter;
* ``provision``: installing that folder from Debian's packages and PyPI, atomically, pinned by ``arm64-lock.json``.

Emulated time is not device time: an ARM runner reports parity (and what it can honestly count), never latency.
"""
