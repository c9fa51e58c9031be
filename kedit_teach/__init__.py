"""kedit_teach: a hands-on course in LLM knowledge editing (see README.md for the course map).

Modules: models (loading, prompts, sliced logits), data (EditCase and loaders), metrics,
editors (one Editor interface; baselines, later GRACE/LTE/RECIPE), evaluate (the harness).
"""
__version__ = "0.1.0"
