"""What people look at: figures (PNG and interactive), the HTML report, an export's model card.

Reads run records only; loads no model; imported by the entry points, never by the layers above.
"""
