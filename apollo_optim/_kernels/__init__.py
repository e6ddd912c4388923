"""The device kernels of the optimizers, beside each other; ``apollo.py``, ``adabelief.py`` and
``adahessian.py`` choose among them and the portable forms they hold themselves.

* CPU (the default there): ``cpu_apollo.py`` (blocked sweeps and same-shape batches) and
  ``cpu_adabelief.py`` (same-shape batches), over the buffers of ``cpu_buffers.py``;
* CUDA (the default there): the fused Triton kernels ``triton_apollo.py``,
  ``triton_adabelief.py`` and ``triton_adahessian.py``, over ``triton_common.py`` and
  ``triton_tables.py``; ``fused.py`` decides when they run and imports no Triton itself.
"""
