"""The space-time diffusion planner (issue 17): forecast-conditioned, guided, checked, replanning.

Beside the faithful diffusion-v0/v1/v2 reproduction (`hrmlab.diffusion`), which this package leaves
untouched. docs/diffusion.md, section "Space-time diffusion planner", describes the design and results.
"""
