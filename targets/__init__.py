"""targets (see DESIGN.md, Layout)."""
