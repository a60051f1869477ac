"""spmwatch: a monitoring daemon that scores AFM scan lines as they arrive."""

__version__ = "0.1.0"
