"""Knowledge editors behind one interface (see base.py). Later: RECIPE."""
from .base import Editor, EditorStateError
from .baselines import FTL, ICE, NoEdit
from .grace import GRACE
from .lte import LTE

METHODS = {"noedit": NoEdit, "ice": ICE, "ft-l": FTL, "grace": GRACE, "lte": LTE}

__all__ = ["Editor", "EditorStateError", "NoEdit", "ICE", "FTL", "GRACE", "LTE", "METHODS"]
