"""Op definitions. Importing this package fills ``ir.opdef.REGISTRY``."""
from . import basic, elementwise, nn, reduce, tensor  # noqa: F401
