"""Op definitions. Importing this package fills ``ir.opdef.REGISTRY``."""
from . import basic, elementwise, fused, lrn, nn, quant, reduce, tensor  # noqa: F401
