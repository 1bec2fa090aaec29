"""elementwise ops."""
