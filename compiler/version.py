"""effc's version, in a module that imports nothing: generated files and manifests quote it
without importing the package's API (``import effc`` pulls in ``effc.api``)."""
__version__ = "0.1.0"
