"""Knowledge editors behind one interface (see base.py)."""
from .base import Editor, EditorStateError
from .baselines import FTL, ICE, NoEdit
from .grace import GRACE
from .lte import LTE
from .recipe import RECIPE

METHODS = {"noedit": NoEdit, "ice": ICE, "ft-l": FTL, "grace": GRACE, "lte": LTE, "recipe": RECIPE}

__all__ = ["Editor", "EditorStateError", "NoEdit", "ICE", "FTL", "GRACE", "LTE", "RECIPE", "METHODS"]
