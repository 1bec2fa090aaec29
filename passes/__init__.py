"""passes (see DESIGN.md, Layout)."""
