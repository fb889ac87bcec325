"""Pictures of circuits, all drawn from circuit.json through one shared layout: a static PNG/SVG
diagram and a self-contained interactive HTML viewer."""
from .details import node_details
from .layout import Layout, circuit_layout
from .static import render_static
from .viewer import render_html

__all__ = ["Layout", "circuit_layout", "node_details", "render_html", "render_static"]
