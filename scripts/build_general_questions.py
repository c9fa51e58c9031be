"""Build kedit_teach/assets/general/questions.jsonl: general questions the unedited CPU model answers.

What it does: the candidate completions below (written for this project) are asked of the offline
Gemma-3-270M base model by greedy decoding through `general.ask` (the same path the benchmark
uses), and a candidate is kept only if
  1. the model's continuation starts with the answer (`metrics.generation_match`), and
  2. no subject of an edit set the course evaluates on (the bundled teaching set, and CounterFact's
     edit split when ../shared is present) occurs in its prompt, so that an edit working as meant
     never counts as lost general ability ("The capital of France is" is out if an edit moves
     France's capital).
What it does not do: check that the answers are true beyond the model agreeing (they are common
knowledge, written by hand) or score editors.

    python scripts/build_general_questions.py [--out kedit_teach/assets/general/questions.jsonl]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kedit_teach import general  # noqa: E402
from kedit_teach.data import SHARED_DIR, load_counterfact, load_teach  # noqa: E402
from kedit_teach.editors import NoEdit  # noqa: E402
from kedit_teach.metrics import normalize  # noqa: E402
from kedit_teach.models import load_model  # noqa: E402

CANDIDATES = [
    ('The capital of France is', 'Paris'),
    ('The capital of Japan is', 'Tokyo'),
    ('The capital of Italy is', 'Rome'),
    ('The capital of Germany is', 'Berlin'),
    ('The capital of Spain is', 'Madrid'),
    ('The capital of England is', 'London'),
    ('The capital of Russia is', 'Moscow'),
    ('The capital of China is', 'Beijing'),
    ('The capital of Egypt is', 'Cairo'),
    ('The capital of Greece is', 'Athens'),
    ('The capital of Canada is', 'Ottawa'),
    ('The capital of Australia is', 'Canberra'),
    ('The capital of Portugal is', 'Lisbon'),
    ('The capital of Ireland is', 'Dublin'),
    ('The capital of Austria is', 'Vienna'),
    ('The capital of Norway is', 'Oslo'),
    ('The capital of Sweden is', 'Stockholm'),
    ('The capital of Poland is', 'Warsaw'),
    ('The capital of Turkey is', 'Ankara'),
    ('The capital of Kenya is', 'Nairobi'),
    ('The capital of Argentina is', 'Buenos Aires'),
    ('The capital of the United States is', 'Washington'),
    ('The largest planet in the solar system is', 'Jupiter'),
    ('The planet closest to the sun is', 'Mercury'),
    ('The red planet is called', 'Mars'),
    ('The star at the centre of our solar system is the', 'Sun'),
    ('The natural satellite of the Earth is the', 'Moon'),
    ('Water is made of hydrogen and', 'oxygen'),
    ('The chemical symbol for gold is', 'Au'),
    ('The chemical symbol for iron is', 'Fe'),
    ('The chemical symbol for sodium is', 'Na'),
    ('Water freezes at a temperature of zero degrees', 'Celsius'),
    ('Plants make their food by a process called', 'photosynthesis'),
    ('The gas that humans breathe in to live is', 'oxygen'),
    ('The gas that plants take in from the air is carbon', 'dioxide'),
    ('The largest ocean on Earth is the', 'Pacific'),
    ('The longest river in Africa is the', 'Nile'),
    ('The tallest mountain in the world is Mount', 'Everest'),
    ('The largest desert in Africa is the', 'Sahara'),
    ('The largest continent is', 'Asia'),
    ('A baby cat is called a', 'kitten'),
    ('A baby dog is called a', 'puppy'),
    ('A baby sheep is called a', 'lamb'),
    ('A baby cow is called a', 'calf'),
    ('A group of wolves is called a', 'pack'),
    ('The animal known as the king of the jungle is the', 'lion'),
    ('The largest mammal in the world is the blue', 'whale'),
    ('Bees make', 'honey'),
    ('Spiders have eight', 'legs'),
    ('Insects have six', 'legs'),
    ('A week has seven', 'days'),
    ('A year has twelve', 'months'),
    ('The day after Monday is', 'Tuesday'),
    ('The day after Friday is', 'Saturday'),
    ('The day before Sunday is', 'Saturday'),
    ('The month after January is', 'February'),
    ('The month after June is', 'July'),
    ('The month before December is', 'November'),
    ('The first month of the year is', 'January'),
    ('The last month of the year is', 'December'),
    ('The season after winter is', 'spring'),
    ('The season after summer is', 'autumn'),
    ('The opposite of hot is', 'cold'),
    ('The opposite of up is', 'down'),
    ('The opposite of big is', 'small'),
    ('The opposite of day is', 'night'),
    ('The opposite of black is', 'white'),
    ('The opposite of left is', 'right'),
    ('The opposite of yes is', 'no'),
    ('The colour of the sky on a clear day is', 'blue'),
    ('The colour of grass is', 'green'),
    ('The colour of snow is', 'white'),
    ('Bananas are usually', 'yellow'),
    ('Mixing blue and yellow gives', 'green'),
    ('One plus one equals', 'two'),
    ('Two plus two equals', 'four'),
    ('Three times three equals', 'nine'),
    ('Ten minus five equals', 'five'),
    ('There are sixty minutes in an', 'hour'),
    ('There are sixty seconds in a', 'minute'),
    ('There are twenty-four hours in a', 'day'),
    ('A triangle has three', 'sides'),
    ('A square has four', 'sides'),
    ('The author of Romeo and Juliet is William', 'Shakespeare'),
    ('The Mona Lisa was painted by Leonardo da', 'Vinci'),
    ('The theory of relativity was developed by Albert', 'Einstein'),
    ('The first man to walk on the moon was Neil', 'Armstrong'),
    ('The inventor of the telephone is usually said to be Alexander Graham', 'Bell'),
    ('The language spoken in Brazil is', 'Portuguese'),
    ('The language spoken in Mexico is', 'Spanish'),
    ('The language spoken in Germany is', 'German'),
    ('The official language of France is', 'French'),
    ('The currency of Japan is the', 'yen'),
    ('The currency of the United Kingdom is the pound', 'sterling'),
    ('The currency of the United States is the', 'dollar'),
    ('The Great Wall is in', 'China'),
    ('The pyramids of Giza are in', 'Egypt'),
    ('The Statue of Liberty is in New', 'York'),
    ('The Taj Mahal is in', 'India'),
    ('The Colosseum is in', 'Rome'),
    ('The Kremlin is in', 'Moscow'),
    ('A doctor who treats teeth is a', 'dentist'),
    ('A person who flies an aeroplane is a', 'pilot'),
    ('A person who bakes bread is a', 'baker'),
    ('Ice is frozen', 'water'),
    ('The freezing point of water in Fahrenheit is thirty-two', 'degrees'),
    ('The boiling point of water is one hundred degrees', 'Celsius'),
    ('The heart pumps', 'blood'),
    ('Humans breathe with their', 'lungs'),
    ('The organ that thinks is the', 'brain'),
    ('The number of continents on Earth is', 'seven'),
    ('The smallest prime number is', 'two'),
    ('The square root of sixty-four is', 'eight'),
    ('Half of ten is', 'five'),
    ('The alphabet starts with the letter', 'A'),
    ('Snow White lived with seven', 'dwarfs'),
    ('Romeo and Juliet is set in the city of', 'Verona'),
    ('The Olympic Games began in ancient', 'Greece'),
    ('The Amazon rainforest is mostly in', 'Brazil'),
    ('Kangaroos live in', 'Australia'),
    ('Penguins live mostly in the southern', 'hemisphere'),
    ('The fastest land animal is the', 'cheetah'),
    ('A spider spins a', 'web'),
    ('Cows give', 'milk'),
    ('Chickens lay', 'eggs'),
    ('The largest country by area is', 'Russia'),
    ('The most spoken language in the world is', 'English'),
    ('Fish breathe through their', 'gills'),
]


def edited_subjects() -> set[str]:
    cases = load_teach()
    cf = SHARED_DIR / "counterfact" / "counterfact-edit.json"
    if cf.exists():
        cases += load_counterfact(cf)
    return {normalize(c.subject) for c in cases if len(normalize(c.subject)) > 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(general.FOLDER / "questions.jsonl"))
    args = parser.parse_args()
    subjects = edited_subjects()
    free = [(q, a) for q, a in CANDIDATES if not any(f" {s} " in f" {normalize(q)} " for s in subjects)]
    model, tok = load_model()
    rows = general.ask(NoEdit(model, tok), free)
    kept = [r for r in rows if r["generation"]]
    with open(args.out, "w", encoding="utf-8") as f:
        for r in kept:
            f.write(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}, ensure_ascii=False) + "\n")
    print(f"{len(CANDIDATES)} candidates, {len(free)} without an edited subject, {len(kept)} answered: wrote {args.out}")
    for r in rows:
        if not r["generation"]:
            print(f"  dropped {r['prompt']!r} -> {r['generated']!r} (answer {r['answer']!r})")


if __name__ == "__main__":
    main()
