"""Pictures of a circuit, all drawn from a `Circuit`: a static PNG/SVG diagram of the whole circuit
and a self-contained interactive HTML viewer (its page template is package data in templates/),
both through one shared layout, and for small circuits a labelled diagram to read."""
from .labelled import MAX_NODES, readable_layout, render_labelled
from .layout import Layout, circuit_layout
from .static import render_static
from .viewer import render_html

__all__ = ["MAX_NODES", "Layout", "circuit_layout", "readable_layout", "render_html", "render_labelled",
           "render_static"]
