"""
Edit cases, and the loaders that turn knowledge-editing benchmarks into them.

An EditCase is one edit, "prompt -> target_new", together with the probes used
to score it: rephrasings (does the edit generalise?), locality pairs (are
unrelated facts left alone?) and portability pairs (do consequences of the
edit follow?). The loaders read CounterFact, ZsRE in MEND's format, KnowEdit
(ZsRE, wiki_counterfact, wiki_recent) and WikiBio into that single shape,
validate every record loudly, and fetch_benchmark downloads the public files.
`split_by_subject` cuts KnowEdit's ZsRE file, the only question-form data here, into a training
part and a held-out part with no subject in common ("zsre-train", "zsre-held-out").

What this module does not do: tokenise, batch, run models or score anything.
It hands out clean Python objects and never writes to the benchmark files.
KnowEdit's probe kinds (Reasoning, Subject_Aliasing, Forgetfulness, ...) are
flattened into plain locality/portability lists; keep the raw JSON if you need
scores per kind.
"""

import contextlib
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
from collections import Counter
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import UsageError

# Files the package ships (pyproject package-data), so a pip install has them too.
ASSETS = Path(__file__).resolve().parent / "assets"
TEACH_PATH = ASSETS / "teach.jsonl"
CACHE_DIR = Path.home() / ".cache" / "kedit_teach" / "benchmarks"
# A checkout's top-level data/ folder (git-ignored but for its README); an installed wheel has none.
CHECKOUT_DATA = Path(__file__).resolve().parents[1] / "data"
# A local copy of the benchmark files (the course's own machines keep one next to the checkout).
SHARED_DIR = Path(os.environ.get("KEDIT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

_HF = "https://huggingface.co/datasets/zjunlp/KnowEdit/resolve/main/benchmark"
_ROME = "https://rome.baulab.info/data/dsets"
BENCHMARKS: dict[str, str] = {
    "knowedit-zsre": f"{_HF}/ZsRE/ZsRE-test-all.json",
    "knowedit-wiki_counterfact": f"{_HF}/wiki_counterfact/test_cf.json",
    "knowedit-wiki_recent": f"{_HF}/wiki_recent/recent_test.json",
    "knowedit-wikibio": f"{_HF}/WikiBio/wikibio-test-all.json",
    "knowedit-wiki_counterfact-train": f"{_HF}/wiki_counterfact/train_cf.json",
    "counterfact": f"{_ROME}/counterfact.json",
    "zsre-mend": f"{_ROME}/zsre_mend_eval.json",
}

# -----------------------------------------------------------------------------
# the edit case


class InvalidCase(UsageError, ValueError):
    """A record that cannot become an EditCase; the message says which, where and how to fix it."""


class DataError(UsageError, ValueError):
    """A data spec or file that can't be read; the message names it and says what to pass instead."""


class MissingData(DataError, FileNotFoundError):
    """A data file that isn't there; the message says how to get it."""


_PAIRS_FIX = "give a list of (prompt, answer) pairs of non-empty strings, or []"
_FIX = {
    "case_id": "give a str or int id, unique within its file",
    "source": "give a short dataset name such as 'counterfact', or ''",
    "subject": "give the edited entity as a str, or '' if the dataset has none",
    "prompt": "every edit needs a non-empty prompt that the new target completes",
    "target_new": "every edit needs a non-empty new target",
    "ground_truth": "give the pre-edit answer as a non-empty str, or None if unknown",
    "rephrase_prompts": "give a list of non-empty paraphrase strings, or []",
    "locality": _PAIRS_FIX,
    "portability": _PAIRS_FIX,
}


def _problem(record: str, name: str, problem: str, fix: str | None = None) -> str:
    return f"record {record}: field {name!r} {problem}; {fix or _FIX[name]}"


@dataclass
class EditCase:
    case_id: str
    subject: str
    prompt: str
    target_new: str
    ground_truth: str | None = None
    rephrase_prompts: list[str] = field(default_factory=list)
    locality: list[tuple[str, str]] = field(default_factory=list)  # (prompt, answer)
    portability: list[tuple[str, str]] = field(default_factory=list)  # (prompt, answer)
    source: str = ""

    def __post_init__(self) -> None:
        if type(self.case_id) is int:  # JSON ids are ints; bool is deliberately not accepted
            self.case_id = str(self.case_id)
        # Strings are stripped because editors put the single space between
        # prompt and target themselves (see descriptor); KnowEdit ZsRE has
        # targets like " Noctuidae" that would otherwise get two.
        self.source = self._text("source", self.source, empty_ok=True)
        self.case_id = self._text("case_id", self.case_id)
        self.subject = self._text("subject", self.subject, empty_ok=True)
        self.prompt = self._text("prompt", self.prompt)
        self.target_new = self._text("target_new", self.target_new)
        if self.ground_truth is not None:
            self.ground_truth = self._text("ground_truth", self.ground_truth)
        self.rephrase_prompts = [self._text("rephrase_prompts", p, f"item {i} ")
                                 for i, p in enumerate(self._list("rephrase_prompts"))]
        self.locality = self._pairs("locality")
        self.portability = self._pairs("portability")

    def _bad(self, name: str, problem: str) -> InvalidCase:
        return InvalidCase(_problem(f"{self.source}#{self.case_id}", name, problem))

    def _text(self, name: str, value: Any, where: str = "", empty_ok: bool = False) -> str:
        if not isinstance(value, str):
            raise self._bad(name, f"{where}is a {type(value).__name__}, not a str")
        if not (empty_ok or value.strip()):
            raise self._bad(name, f"{where}is empty")
        return value.strip()

    def _list(self, name: str) -> list | tuple:
        value = getattr(self, name)
        if not isinstance(value, (list, tuple)):
            raise self._bad(name, f"is a {type(value).__name__}, not a list")
        return value

    def _pairs(self, name: str) -> list[tuple[str, str]]:
        pairs = []
        for i, pair in enumerate(self._list(name)):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise self._bad(name, f"item {i} is {pair!r}, not a (prompt, answer) pair")
            pairs.append((self._text(name, pair[0], f"item {i} prompt "),
                          self._text(name, pair[1], f"item {i} answer ")))
        return pairs

    @property
    def descriptor(self) -> str:
        """The edit as one sentence, as in-context editors and retrieval memories store it."""
        return f"{self.prompt} {self.target_new}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("locality", "portability"):
            d[name] = [list(pair) for pair in d[name]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EditCase":
        if not isinstance(d, dict):
            raise InvalidCase(f"an EditCase record must be a JSON object, got {type(d).__name__}")
        record = f"{d.get('source', '')}#{d.get('case_id', '?')}"
        names = [f.name for f in fields(cls)]
        for key in d:
            if key not in names:
                raise InvalidCase(_problem(record, key, "is not an EditCase field",
                                           f"remove it (known fields: {', '.join(names)})"))
        for f in fields(cls):
            if f.default is MISSING and f.default_factory is MISSING and f.name not in d:
                raise InvalidCase(_problem(record, f.name, "is missing"))
        return cls(**d)


def first_answer(x: Any) -> str | None:
    """
    The primary answer among str / list of str / list of alias lists, e.g.
    [["Soviet Union", "USSR"]] -> "Soviet Union". None if there is no non-empty
    string anywhere (KnowEdit wiki_recent has answers like [[]]).
    """
    if isinstance(x, str):
        return x.strip() or None
    if isinstance(x, (list, tuple)):
        for item in x:
            answer = first_answer(item)
            if answer is not None:
                return answer
    return None

# -----------------------------------------------------------------------------
# reading benchmark files


class _BadField(Exception):
    """Raised by the per-format converters; _build turns it into an InvalidCase naming the record."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(name, problem)
        self.name, self.problem = name, problem


def _at(obj: Any, path: str) -> Any:
    """obj["a"]["b"] for path "a.b", failing with the full dotted field name."""
    for key in path.split("."):
        if not isinstance(obj, dict) or key not in obj:
            raise _BadField(path, "is missing")
        obj = obj[key]
    return obj


def _read_records(path: Path) -> list:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path} can't be read as UTF-8 text ({e}); pass a JSON or JSONL benchmark file") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError:  # not one JSON document: try one record per line
        data = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: neither a JSON list nor JSONL ({e.msg})") from None
    if isinstance(data, dict):  # a JSONL file holding a single record
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records or JSONL, got {type(data).__name__}")
    return data


def _build(path: Path, records: list, source: str, convert: Callable[[dict], dict[str, Any]],
           n: int | None) -> list[EditCase]:
    """Turn raw records into EditCases, naming file, index and field on any failure."""
    cases, seen, dropped = [], set(), 0
    for i, rec in enumerate(records if n is None else records[:n]):
        where = f"{path.name}[{i}]"
        if not isinstance(rec, dict):
            raise InvalidCase(f"{where}: record is a {type(rec).__name__}; every record must be a JSON object")
        case_id = rec.get("case_id", i)
        try:
            kwargs = convert(rec)
            # A probe without any answer cannot be scored, so it is dropped (and
            # counted) rather than failing the whole file over an empty alias list.
            for name in ("locality", "portability"):
                pairs = kwargs.get(name, [])
                kwargs[name] = [p for p in pairs if p[1] is not None]
                dropped += len(pairs) - len(kwargs[name])
            case = EditCase(case_id=case_id, source=source, **kwargs)
        except _BadField as e:
            raise InvalidCase(f"{where}: " + _problem(f"{source}#{case_id}", e.name, e.problem,
                                                      f"check it against the {source} format")) from None
        except InvalidCase as e:
            raise InvalidCase(f"{where}: {e}") from None
        if case.case_id in seen:
            raise InvalidCase(f"{where}: " + _problem(f"{source}#{case.case_id}", "case_id",
                                                      "repeats an earlier record's id"))
        seen.add(case.case_id)
        cases.append(case)
    if dropped:
        warnings.warn(f"{path.name}: dropped {dropped} {DROPPED} whose answer is empty ('' or [[]]); "
                      "they cannot be scored", stacklevel=3)
    return cases


DROPPED = "locality/portability probes"


@contextlib.contextmanager
def dropping_quietly():
    """Within this block, loading a file whose empty-answer probes are dropped says nothing: training
    data (KnowEdit's train_cf and recent_train hold 9 such probes) loses nothing it needs, and the
    warning, meant for a scored evaluation, would be a red box in notebooks 04 and 05."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=rf".*dropped \d+ {re.escape(DROPPED)}", category=UserWarning)
        yield


def _probes(groups: Any, name: str) -> list[tuple[Any, str | None]]:
    """KnowEdit's {kind: [{prompt, ground_truth}, ...]} flattened to (prompt, answer) pairs."""
    if not isinstance(groups, dict):
        raise _BadField(name, f"is a {type(groups).__name__}, not an object of probe lists")
    pairs = []
    for kind, items in groups.items():
        for item in items if isinstance(items, list) else [items]:  # a kind may hold one probe, not a list
            if not isinstance(item, dict) or "prompt" not in item or "ground_truth" not in item:
                raise _BadField(f"{name}.{kind}", f"holds {item!r}, not a {{prompt, ground_truth}} object")
            pairs.append((item["prompt"], first_answer(item["ground_truth"])))
    return pairs


def _from_counterfact(rec: dict) -> dict[str, Any]:
    if "requested_rewrite" in rec:  # the original ROME release nests the edit
        template, subject = _at(rec, "requested_rewrite.prompt"), _at(rec, "requested_rewrite.subject")
        if not isinstance(template, str) or "{}" not in template:
            raise _BadField("requested_rewrite.prompt", "needs a '{}' slot for the subject")
        truth = first_answer(_at(rec, "requested_rewrite.target_true.str"))
        return dict(subject=subject, prompt=template.replace("{}", str(subject)),
                    target_new=_at(rec, "requested_rewrite.target_new.str"), ground_truth=truth,
                    rephrase_prompts=_at(rec, "paraphrase_prompts"),
                    locality=[(p, truth) for p in _at(rec, "neighborhood_prompts")])
    return dict(subject=_at(rec, "subject"), prompt=_at(rec, "prompt"), target_new=_at(rec, "target_new"),
                ground_truth=first_answer(rec.get("ground_truth")),
                rephrase_prompts=[_at(rec, "rephrase_prompt")],
                locality=[(_at(rec, "locality_prompt"), first_answer(_at(rec, "locality_ground_truth")))])


def _from_zsre_mend(rec: dict) -> dict[str, Any]:
    loc = _at(rec, "loc")
    if isinstance(loc, str):  # MEND prefixes its Natural Questions locality prompts
        loc = loc.removeprefix("nq question: ")
    return dict(subject=_at(rec, "subject"), prompt=_at(rec, "src"), target_new=_at(rec, "alt"),
                ground_truth=first_answer(rec.get("answers")), rephrase_prompts=[_at(rec, "rephrase")],
                locality=[(loc, first_answer(_at(rec, "loc_ans")))])


def _from_knowedit(rec: dict) -> dict[str, Any]:
    rephrase = rec.get("rephrase_prompt")  # only the ZsRE part has one
    return dict(subject=_at(rec, "subject"), prompt=_at(rec, "prompt"), target_new=_at(rec, "target_new"),
                ground_truth=first_answer(rec.get("ground_truth")),
                rephrase_prompts=[] if rephrase is None else [rephrase],
                locality=_probes(rec.get("locality", {}), "locality"),
                portability=_probes(rec.get("portability", {}), "portability"))


def _from_wikibio(rec: dict) -> dict[str, Any]:
    return dict(subject=_at(rec, "concept"), prompt=_at(rec, "text"), target_new=_at(rec, "labels"),
                locality=_probes(rec.get("locality", {}), "locality"))


def _knowedit_source(path: Path, records: list) -> str:
    name = path.name.lower()
    for key, source in (("zsre", "knowedit-zsre"), ("recent", "knowedit-recent"),
                        ("counterfact", "knowedit-cf"), ("cf", "knowedit-cf")):
        if key in name:
            return source
    # A renamed file: only ZsRE has rephrasings, and only wiki_recent lacks the old answer.
    first = records[0] if records and isinstance(records[0], dict) else {}
    if "rephrase_prompt" in first:
        return "knowedit-zsre"
    return "knowedit-cf" if "ground_truth" in first else "knowedit-recent"


def load_counterfact(path: str | Path, n: int | None = None) -> list[EditCase]:
    """CounterFact, flat ROME/RECIPE records or the original nested counterfact.json."""
    path = Path(path)
    return _build(path, _read_records(path), "counterfact", _from_counterfact, n)


def load_zsre_mend(path: str | Path, n: int | None = None) -> list[EditCase]:
    """ZsRE in MEND's format {subject, src, alt, answers, rephrase, loc, loc_ans}."""
    path = Path(path)
    return _build(path, _read_records(path), "zsre", _from_zsre_mend, n)


def load_knowedit(path: str | Path, n: int | None = None) -> list[EditCase]:
    """KnowEdit ZsRE, wiki_counterfact or wiki_recent; the source is read off the file."""
    path = Path(path)
    records = _read_records(path)
    return _build(path, records, _knowedit_source(path, records), _from_knowedit, n)


def load_wikibio(path: str | Path, n: int | None = None) -> list[EditCase]:
    """KnowEdit WikiBio: continue a biography passage (text) with a new sentence (labels)."""
    path = Path(path)
    return _build(path, _read_records(path), "wikibio", _from_wikibio, n)


def save_jsonl(cases: Iterable[EditCase], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for case in cases:
            f.write(json.dumps(case.to_dict(), ensure_ascii=False) + "\n")


def load_jsonl(path: str | Path) -> list[EditCase]:
    """Cases written by save_jsonl."""
    return [EditCase.from_dict(d) for d in _read_records(Path(path))]


def load_teach(n: int | None = None) -> list[EditCase]:
    """The small teaching set bundled with the repo."""
    if not TEACH_PATH.exists():
        raise MissingData(f"{TEACH_PATH} does not exist; build it with `python scripts/build_teach_set.py`")
    return load_jsonl(TEACH_PATH)[:n]


# -----------------------------------------------------------------------------
# KnowEdit ZsRE, split once into a training part and a held-out part

ZSRE_FILE = "knowedit/ZsRE-test-all.json"
ZSRE_PARTS = ("zsre-train", "zsre-held-out")
ZSRE_SPLIT = {"seed": 0, "train_share": 2 / 3}  # the split every course number uses


def split_by_subject(cases: list[EditCase], seed: int, train_share: float) -> tuple[list[EditCase], list[EditCase]]:
    """(train, held_out): whole subjects go to one part or the other, in a seeded order, until the
    training part holds about `train_share` of the cases. Each part keeps the file's order."""
    if not 0 < train_share < 1:
        raise ValueError(f"train_share={train_share} must lie strictly between 0 and 1")
    names = sorted(subjects(cases))
    random.Random(seed).shuffle(names)
    count = Counter(subject_key(c) for c in cases)
    train, total = set(), 0
    for name in names:
        if total >= train_share * len(cases):
            break
        train.add(name)
        total += count[name]
    inside = [subject_key(c) in train for c in cases]
    return [c for c, t in zip(cases, inside) if t], [c for c, t in zip(cases, inside) if not t]


def zsre_file(path: str | Path | None = None) -> Path:
    """KnowEdit's ZsRE file: `path`, else the local copy, else downloaded."""
    if path and not Path(path).exists():
        raise MissingData(f"{path} does not exist; run `python -m kedit_teach download knowedit-zsre`, or pass "
                          "the path of a local copy of ZsRE-test-all.json")
    return Path(path) if path else local_or_fetch(ZSRE_FILE, "knowedit-zsre")


def _zsre_parts(path: str | Path | None) -> tuple[list[EditCase], list[EditCase]]:
    return split_by_subject(load_knowedit(zsre_file(path)), **ZSRE_SPLIT)


def load_zsre_part(part: str, path: str | Path | None = None) -> list[EditCase]:
    """One part of KnowEdit ZsRE under ZSRE_SPLIT: "zsre-train" (RECIPE's question-form training
    data) or "zsre-held-out" (every ZsRE number the course shows)."""
    if part not in ZSRE_PARTS:
        raise DataError(f"unknown ZsRE part {part!r}; use one of {', '.join(ZSRE_PARTS)}")
    train, held_out = _zsre_parts(path)
    return train if part == "zsre-train" else held_out


def split_record(spec: str) -> dict | None:
    """What a result made on `spec` must say about the split, or None for a spec that is no part:
    the file, the rule, both parts' sizes and a hash of the held-out ids (two runs on different
    splits can then never be compared by mistake)."""
    part, _, path = spec.partition(":")
    if part not in ZSRE_PARTS:
        return None
    train, held_out = _zsre_parts(path or None)
    ids = hashlib.sha256("\n".join(c.case_id for c in held_out).encode()).hexdigest()[:12]
    return {"part": part, "file": ZSRE_FILE, **ZSRE_SPLIT, "by": "subject", "train": len(train),
            "held_out": len(held_out), "held_out_ids_sha256": ids}


# scheme -> (loader, names `python -m kedit_teach download` knows for it)
_SCHEMES: dict[str, tuple[Callable[..., list[EditCase]], tuple[str, ...]]] = {
    "counterfact": (load_counterfact, ("counterfact",)),
    "zsre": (load_zsre_mend, ("zsre-mend",)),
    "knowedit": (load_knowedit, ("knowedit-zsre", "knowedit-wiki_counterfact", "knowedit-wiki_recent")),
    "wikibio": (load_wikibio, ("knowedit-wikibio",)),
}


def load_cases(spec: str, n: int | None = None, seed: int | None = None) -> list[EditCase]:
    """
    Load cases from a command-line spec: "teach", "counterfact:PATH",
    "zsre:PATH" (MEND format), "knowedit:PATH", "wikibio:PATH", or a part of
    KnowEdit ZsRE, "zsre-train[:PATH]" or "zsre-held-out[:PATH]" (from the local
    copy without a PATH). With a seed the cases are shuffled before the first n
    are taken.
    """
    scheme, _, path = spec.partition(":")
    if spec == "teach":
        cases = load_teach()
    elif scheme in ZSRE_PARTS:
        cases = load_zsre_part(scheme, path or None)
    elif scheme in _SCHEMES and path:
        loader, names = _SCHEMES[scheme]
        if not Path(path).exists():
            raise MissingData(
                f"{path} does not exist; run `python -m kedit_teach download NAME` with NAME one of "
                f"{', '.join(names)}, or pass the path of a local copy as {scheme}:PATH")
        # Without a shuffle only the first n records are needed, so skip converting the rest.
        cases = loader(path, n if seed is None else None)
    else:
        raise DataError(f"unknown data spec {spec!r}; use one of: teach, counterfact:PATH, "
                         f"zsre:PATH (MEND format), knowedit:PATH, wikibio:PATH, zsre-train, zsre-held-out")
    if seed is not None:
        random.Random(seed).shuffle(cases)
    return cases[:n]


# -----------------------------------------------------------------------------
# keeping train and evaluation subjects apart


def subject_key(case: EditCase) -> str:
    """The subject as compared across data sets: case and surrounding spaces folded."""
    return case.subject.strip().lower()


def subjects(cases: Iterable[EditCase]) -> set[str]:
    """Normalised subjects; empty ones are left out because they name nothing."""
    return {subject_key(c) for c in cases if c.subject.strip()}


def one_per_subject(cases: Iterable[EditCase]) -> list[EditCase]:
    """The first case of each subject, in order (cases with an empty subject are all kept).
    KnowEdit's ZsRE edits one fact of a subject several times with different answers ("In what year
    did JS 7.62 enter service?" 1961, "What year was JS 7.62 introduced?" 1963): with all of them
    stored, no retriever can tell which one a rephrasing means."""
    seen: set[str] = set()
    kept = []
    for c in cases:
        key = subject_key(c)
        if not key or key not in seen:
            seen.add(key)
            kept.append(c)
    return kept


def disjoint_subjects(train: Iterable[EditCase], held_out: Iterable[EditCase]) -> list[EditCase]:
    """
    The train cases whose subject never occurs in held_out, so that a learned
    editor is not evaluated on entities it was trained to edit. Train cases with
    an empty subject cannot be matched and are kept.
    """
    seen = subjects(held_out)
    return [c for c in train if subject_key(c) not in seen]

# -----------------------------------------------------------------------------
# downloading


class BenchmarkUnavailable(UsageError, RuntimeError):
    """A benchmark file could not be downloaded; the message says how to get it by hand."""


def download_dir() -> Path:
    """Where `download` puts benchmark files: data/ in a checkout (its README lists every data set
    the course uses), else CACHE_DIR."""
    return CHECKOUT_DATA if (CHECKOUT_DATA / "README.md").exists() else CACHE_DIR


def fetch_benchmark(name: str, dest: str | Path | None = None) -> Path:
    """Path of a benchmark file in dest (default `download_dir()`), downloading it if absent."""
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    url = BENCHMARKS[name]
    target = Path(dest if dest is not None else download_dir()).expanduser() / url.rsplit("/", 1)[1]
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Download next to the target and rename, so an interrupted download never
    # leaves a truncated file that a later call would take for the real one.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
            shutil.copyfileobj(response, out)
        os.replace(tmp, target)
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise BenchmarkUnavailable(
            f"could not download {name!r} ({e}); we seem to be offline. Download {url} "
            f"by hand and save it as {target}") from e
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def local_or_fetch(relative: str, name: str) -> Path:
    """A benchmark file from the local copy (SHARED_DIR) if it is there, else the download helper."""
    path = SHARED_DIR / relative
    return path if path.exists() else fetch_benchmark(name)
