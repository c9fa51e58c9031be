"""Knowledge editors behind one interface (see base.py). Later: LTE, RECIPE."""
from .base import Editor, EditorStateError
from .baselines import FTL, ICE, NoEdit
from .grace import GRACE

METHODS = {"noedit": NoEdit, "ice": ICE, "ft-l": FTL, "grace": GRACE}

__all__ = ["Editor", "EditorStateError", "NoEdit", "ICE", "FTL", "GRACE", "METHODS"]
