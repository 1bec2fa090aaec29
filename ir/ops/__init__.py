"""Op definitions. Importing this package fills ``ir.opdef.REGISTRY``."""
from . import basic, elementwise, fused, lrn, nn, reduce, tensor  # noqa: F401
