"""Knowledge editors behind one interface (see base.py). Later: GRACE, LTE, RECIPE."""
from .base import Editor, EditorStateError
from .baselines import FTL, ICE, NoEdit

METHODS = {"noedit": NoEdit, "ice": ICE, "ft-l": FTL}

__all__ = ["Editor", "EditorStateError", "NoEdit", "ICE", "FTL", "METHODS"]
