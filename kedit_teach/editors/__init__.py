"""Knowledge editors behind one interface (see base.py)."""
from .base import Editor, EditorStateError
from .baselines import FTL, ICE, NoEdit
from .grace import GRACE
from .lte import LTE
from .recipe import RECIPE
from .memit import MEMIT, AlphaEdit
from .mend import MEND
from .rome import ROME
from .serac import SERAC

METHODS = {"noedit": NoEdit, "ice": ICE, "ft-l": FTL, "grace": GRACE, "lte": LTE, "recipe": RECIPE, "serac": SERAC,
           "mend": MEND, "rome": ROME, "memit": MEMIT, "alphaedit": AlphaEdit}
# One interactive edit must take seconds on a CPU (the playground, the tour): FT-L is pinned to 10
# steps whatever its default; the other methods are that fast with their defaults.
FAST_SETTINGS: dict[str, dict] = {"ft-l": {"steps": 10}}

__all__ = ["Editor", "EditorStateError", "NoEdit", "ICE", "FTL", "GRACE", "LTE", "RECIPE", "SERAC", "MEND", "ROME", "MEMIT", "AlphaEdit", "METHODS", "FAST_SETTINGS"]
