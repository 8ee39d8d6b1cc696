"""Baselines trained and evaluated on the same simulator as GradMAP.

Self-supervised learning, IPPO/MAPPO, rules and the perfect-foresight optimum land with their own issue.
"""
