"""Training and evaluating density models: datasets, Gaussian-dot targets, losses, the loop, metrics.

Nothing here runs during ``wsicount run``; a slide run needs only ``wsicount.models``.
"""
