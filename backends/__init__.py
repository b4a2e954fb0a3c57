"""portio's backends, one module per OS mechanism (installed as ``portio.backends``).

- ``selector``: readiness emulation over :mod:`selectors`, on any OS;
- ``uring``: Linux io_uring through a cffi-built extension;
- ``iocp``: the Windows I/O completion port through cffi in ABI mode.
"""
