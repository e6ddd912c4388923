"""The optimizers of the Apollo paper, exact to its update rules, behind one registry.

>>> import apollo_optim as optim
>>> opt = optim.Apollo(model.parameters(), lr=0.01)           # doctest: +SKIP
>>> opt = optim.create("apollow", model.parameters(), lr=0.01)  # doctest: +SKIP
>>> optim.names()
['adabelief', 'adahessian', 'adam', 'apollo', 'apollow', 'radam', 'sgd']

Every module in this package is imported here, so a new optimizer joins every
comparison by adding one file that calls :func:`optim.register`.
"""

from importlib import import_module as _import_module
from pkgutil import iter_modules as _iter_modules

from ._warmup import WarmupLRWarning, warmup_lr
from .adabelief import AdaBelief
from .adahessian import AdaHessian
from .amp import batchnorm_in_float32, scaler_step
from .apollo import Apollo
from .registry import OptimizerSpec, create, get, names, register, unregister
from .schedules import SCHEDULES, Schedule, lr_at

for _module in _iter_modules(__path__):
    _import_module(f"{__name__}.{_module.name}")

__all__ = [
    "SCHEDULES",
    "AdaBelief",
    "AdaHessian",
    "Apollo",
    "OptimizerSpec",
    "Schedule",
    "WarmupLRWarning",
    "batchnorm_in_float32",
    "create",
    "get",
    "lr_at",
    "names",
    "register",
    "scaler_step",
    "unregister",
    "warmup_lr",
]
