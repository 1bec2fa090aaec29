"""Op definitions. Importing this package fills ``ir.opdef.REGISTRY``."""
from . import basic, elementwise, lrn, nn, reduce, tensor  # noqa: F401
