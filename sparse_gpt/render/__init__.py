"""Pictures of circuits, all drawn from circuit.json through one shared layout."""
from .layout import Layout, circuit_layout
from .static import render_static

__all__ = ["Layout", "circuit_layout", "render_static"]
