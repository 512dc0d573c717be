"""core/families layer of mechscope (see DESIGN.md for the layering)."""
