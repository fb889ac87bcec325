"""Pictures of a circuit, all drawn from a `Circuit` through one shared layout: a static PNG/SVG
diagram and a self-contained interactive HTML viewer (its page template is package data in
templates/)."""
from .layout import Layout, circuit_layout
from .static import render_static
from .viewer import render_html

__all__ = ["Layout", "circuit_layout", "render_html", "render_static"]
