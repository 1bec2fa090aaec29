"""codegen (see DESIGN.md, Layout)."""
