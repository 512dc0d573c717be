"""core layer of mechscope (see DESIGN.md for the layering)."""
