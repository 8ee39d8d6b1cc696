"""GradMAP: gradient-based multi-agent proximal learning (and its no-reuse variant GradMA).

The trainer lands with its own issue; this package exists now so that the distribution's layout is fixed.
"""
