"""Build kedit_teach/assets/teach.jsonl, the bundled teaching set of counterfactual edits, checked on the model.

What it does: the fact tables below (written for this project, not copied from any dataset) are
expanded by templates into candidate edit cases, one relation per domain, each with 2+ paraphrases,
locality probes (other relations of the same subject, and neighbouring subjects with the same
relation) and portability probes (multi-hop consequences of the new fact, each stored with the hop
prompts it relies on). The counterfactual target is picked deterministically from objects of the
same type. The offline Gemma-3-270M base model (`load_model()`) answers every prompt by greedy
decoding (batches of 32, 8 new tokens), and a candidate is kept only if
  1. the continuation of its prompt starts with the ground truth, and not with target_new;
  2. at least one same-subject and one neighbour locality probe are answered correctly (wrong ones
     are dropped; at most 2 of each kind are kept);
  3. at least one portability probe survives: every hop it relies on (e.g. "Rome is a city in the
     country of" -> "Italy") is answered correctly, and its answer differs from the answer under the
     true fact (otherwise it would not test the edit).
Matching: both texts are accent-folded, lowercased, stripped of punctuation and of a leading "the",
and the continuation must start with the answer's words. Rephrasings are not checked.

What it does not do: verify that the facts are true (that is on whoever edits the tables) or score
editors. Output is deterministic: no randomness, and the same prompts always form the same batches.

    export KEDIT_CACHE=/tmp/kcache; python scripts/build_teach_set.py [--out kedit_teach/assets/teach.jsonl]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def table(text: str) -> list[list[str | None]]:
    """Rows are separated by ';' or newlines, fields by ','; '-' marks a missing field."""
    rows = [r for line in text.splitlines() for r in line.split(";") if r.strip()]
    return [[None if f.strip() == "-" else f.strip() for f in r.split(",")] for r in rows]

# ----------------------------------------------------------------------------- facts
# country, capital, official language, currency, continent; '-' where the answer is contested or
# has no single common form, so that no probe is built on it.
COUNTRIES = {r[0]: r[1:] for r in table("""
France, Paris, French, euro, Europe; Germany, Berlin, German, euro, Europe
Italy, Rome, Italian, euro, Europe; Spain, Madrid, Spanish, euro, Europe
Portugal, Lisbon, Portuguese, euro, Europe; Greece, Athens, Greek, euro, Europe
Austria, Vienna, German, euro, Europe; the Netherlands, Amsterdam, Dutch, euro, Europe
Ireland, Dublin, -, euro, Europe; Finland, Helsinki, Finnish, euro, Europe
Belgium, Brussels, -, euro, Europe; Sweden, Stockholm, Swedish, Swedish krona, Europe
Norway, Oslo, Norwegian, Norwegian krone, Europe; Denmark, Copenhagen, Danish, Danish krone, Europe
Poland, Warsaw, Polish, Polish zloty, Europe; Hungary, Budapest, Hungarian, forint, Europe
Ukraine, Kyiv, Ukrainian, hryvnia, Europe; Switzerland, Bern, -, Swiss franc, Europe
Russia, Moscow, Russian, ruble, -; the Czech Republic, Prague, Czech, Czech koruna, Europe
Turkey, Ankara, Turkish, Turkish lira, -; Japan, Tokyo, Japanese, yen, Asia
China, Beijing, Mandarin, yuan, Asia; India, New Delhi, Hindi, rupee, Asia
South Korea, Seoul, Korean, won, Asia; Thailand, Bangkok, Thai, Thai baht, Asia
Iran, Tehran, Persian, rial, Asia; Vietnam, Hanoi, Vietnamese, Vietnamese dong, Asia
Indonesia, Jakarta, Indonesian, rupiah, Asia; Pakistan, Islamabad, Urdu, rupee, Asia
Iraq, Baghdad, Arabic, Iraqi dinar, Asia; Israel, -, Hebrew, shekel, Asia
Egypt, Cairo, Arabic, Egyptian pound, Africa; Kenya, Nairobi, -, shilling, Africa
Nigeria, Abuja, English, naira, Africa; Morocco, Rabat, Arabic, dirham, Africa
Ethiopia, Addis Ababa, Amharic, birr, Africa; Brazil, Brasília, Portuguese, real, South America
Argentina, Buenos Aires, Spanish, peso, South America; Chile, Santiago, Spanish, peso, South America
Peru, Lima, Spanish, sol, South America; Colombia, Bogotá, Spanish, peso, South America
Venezuela, Caracas, Spanish, bolívar, South America; Mexico, Mexico City, Spanish, peso, North America
Cuba, Havana, Spanish, peso, North America; Canada, Ottawa, -, Canadian dollar, North America
Australia, Canberra, -, Australian dollar, -
""")}
CAPITAL, LANGUAGE, CURRENCY, CONTINENT = range(4)
# Counterfactual locations: cities whose country the model must know (a checked hop).
CITY_COUNTRY = dict(table("""
Paris, France; Rome, Italy; Berlin, Germany; Madrid, Spain; Tokyo, Japan; Cairo, Egypt; Athens, Greece
Lisbon, Portugal; Vienna, Austria; Dublin, Ireland; Stockholm, Sweden; Oslo, Norway; Warsaw, Poland
Budapest, Hungary; Beijing, China; Bangkok, Thailand; Nairobi, Kenya; Copenhagen, Denmark; Helsinki, Finland
Brussels, Belgium; Moscow, Russia; Buenos Aires, Argentina; Mexico City, Mexico; Havana, Cuba; Lima, Peru
Amsterdam, the Netherlands; Rio de Janeiro, Brazil; Mumbai, India; Seoul, South Korea; Istanbul, Turkey
"""))
# The country of every city in the tables, so that a counterfactual city is in another country.
HOME_CITY_COUNTRY = {city: k for k, v in {
    "the United States": "New York, San Francisco, Seattle, Los Angeles, Washington, St. Louis, Redmond, "
                         "Cupertino, Atlanta, Chicago, Bentonville, Palo Alto",
    "Italy": "Pisa, Florence, Venice, Milan, Turin", "Germany": "Munich, Wolfsburg, Stuttgart, Ingolstadt",
    "the United Kingdom": "London, Edinburgh", "India": "Agra, Bangalore", "China": "Hangzhou, Shenzhen",
    "Spain": "Barcelona, Granada", "Australia": "Sydney", "the United Arab Emirates": "Dubai",
    "Malaysia": "Kuala Lumpur", "Russia": "St. Petersburg", "Saudi Arabia": "Mecca", "Egypt": "Giza",
    "France": "Toulouse", "Sweden": "Gothenburg"}.items() for city in v.split(", ")} | CITY_COUNTRY
LANG_ORIGIN = dict(table("Spanish, Spain; Portuguese, Portugal; Japanese, Japan; Dutch, the Netherlands; "
                         "Swedish, Sweden; Hindi, India; Korean, Korea"))
ISSUER = dict(table("euro, European Central Bank; yen, Bank of Japan; pound, Bank of England; "
                    "rupee, Reserve Bank of India; yuan, People's Bank of China"))
PLAYER = dict(table("piano, pianist; violin, violinist; drums, drummer; harp, harpist; "
                    "clarinet, clarinetist"))
# sport, what a professional is called, surface, top American league, what the ball is hit with
SPORTS = {r[0]: r[1:] for r in table("""
football, footballer, field, -, -; basketball, basketball player, court, NBA, -
tennis, tennis player, court, -, racket; golf, golfer, course, PGA Tour, club
ice hockey, hockey player, -, NHL, stick; baseball, baseball player, field, -, bat
cricket, cricketer, field, -, bat; boxing, boxer, -, -, -
""")}
# subject, city, then facts about the same subject (its locality probes): "tail = answer", or just
# "answer" for "<subject> is a famous <answer>"
LANDMARKS = table("""
the Eiffel Tower, Paris, was designed by the engineer = Gustave Eiffel, landmark
the Colosseum, Rome, was built by the ancient = Romans; the Louvre, Paris, museum
the Statue of Liberty, New York, was a gift from the people of = France, landmark
the Sagrada Familia, Barcelona, was designed by the architect = Antoni Gaudí, church
the Brandenburg Gate, Berlin, landmark; the Leaning Tower of Pisa, Pisa, landmark
the Sydney Opera House, Sydney, landmark; the Parthenon, Athens, was dedicated to the goddess = Athena
the Golden Gate Bridge, San Francisco, landmark; the Empire State Building, New York, landmark
the Tower of London, London, was built by William the = Conqueror
the Taj Mahal, Agra, was built by the emperor = Shah Jahan, is made of white = marble
the Burj Khalifa, Dubai, is the tallest = building; the Space Needle, Seattle, was built for the = 1962
the Prado Museum, Madrid, art museum; the Rijksmuseum, Amsterdam, museum
the Notre-Dame Cathedral, Paris, Gothic cathedral; the Arc de Triomphe, Paris, monument
the Trevi Fountain, Rome, landmark; the British Museum, London, museum
Times Square, New York, tourist attraction; the Blue Mosque, Istanbul, mosque
the White House, Washington, is the official residence of the = President
the Petronas Towers, Kuala Lumpur, landmark; Tokyo Tower, Tokyo, landmark
the Hermitage Museum, St. Petersburg, museum; the Uffizi Gallery, Florence, art gallery
the Doge's Palace, Venice, tourist attraction; the Reichstag, Berlin, building
the Musée d'Orsay, Paris, museum; the Gateway Arch, St. Louis, landmark
Edinburgh Castle, Edinburgh, landmark; the London Eye, London, attraction
Trafalgar Square, London, landmark; La Scala, Milan, opera house; Park Güell, Barcelona, attraction
the Pyramids of Giza, Giza, were built by the ancient = Egyptians
the Lincoln Memorial, Washington, landmark; Central Park, New York, park
""")
# company, headquarters, then "tail = answer" facts as above
COMPANIES = table("""
Microsoft, Redmond, is best known for its = Windows; Apple, Cupertino, was co-founded by = Steve Jobs
Amazon, Seattle, was founded by = Jeff Bezos; BMW, Munich, is a company that makes = cars
Volkswagen, Wolfsburg, is a company that makes = cars
Mercedes-Benz, Stuttgart, is a company that makes = cars
Coca-Cola, Atlanta, is best known for its = soft drinks
McDonald's, Chicago, is best known for its = burgers; Airbus, Toulouse, is a company that makes = airplanes
Fiat, Turin, is a company that makes = cars; Volvo, Gothenburg, is a company that makes = cars
Walmart, Bentonville, was co-founded by = Sam Walton; Alibaba, Hangzhou, is best known for its = e-commerce
Huawei, Shenzhen, is a company that makes = phones; Heineken, Amsterdam, is best known for its = beer
Uber, San Francisco, is best known for its = ride-hailing
Porsche, Stuttgart, is a company that makes = cars
H&M, Stockholm, is best known for its = affordable clothing
Carlsberg, Copenhagen, is best known for its = beer; Pirelli, Milan, is a company that makes = tyres
Hewlett-Packard, Palo Alto, is a company that makes = computers
""")
# musician, instrument, genre, home country, band
MUSICIANS = table("""
Jimi Hendrix, guitar, rock, the United States, The Jimi Hendrix Experience
Eric Clapton, guitar, rock, England, Cream; Carlos Santana, guitar, rock, Mexico, Santana
Jimmy Page, guitar, rock, England, Led Zeppelin; Eddie Van Halen, guitar, rock, -, Van Halen
Keith Richards, guitar, rock, England, The Rolling Stones; Ringo Starr, drums, rock, England, The Beatles
George Harrison, guitar, rock, England, The Beatles; Louis Armstrong, trumpet, jazz, the United States, -
John Coltrane, saxophone, jazz, the United States, -; Charlie Parker, saxophone, jazz, the United States, -
Niccolò Paganini, violin, classical, Italy, -; Ludwig van Beethoven, piano, classical, Germany, -
Franz Liszt, piano, classical, Hungary, -; Elton John, piano, rock, England, -
Billy Joel, piano, rock, the United States, -; Glenn Gould, piano, classical, Canada, -
Thelonious Monk, piano, jazz, the United States, -; Bob Dylan, guitar, folk, the United States, -
Johnny Cash, guitar, country, the United States, -; Django Reinhardt, guitar, jazz, -, -
Kurt Cobain, guitar, rock, the United States, Nirvana; Brian May, guitar, rock, England, Queen
Chuck Berry, guitar, rock, the United States, -; Dave Brubeck, piano, jazz, the United States, -
Mark Knopfler, guitar, rock, -, Dire Straits; Jeff Beck, guitar, rock, England, -
Clara Schumann, piano, classical, Germany, -; Sergei Rachmaninoff, piano, classical, Russia, -
Vladimir Horowitz, piano, classical, -, -; Arthur Rubinstein, piano, classical, Poland, -
Art Blakey, drums, jazz, the United States, -
""")
# athlete, sport, home country
ATHLETES = table("""
Lionel Messi, football, Argentina; Cristiano Ronaldo, football, Portugal
Diego Maradona, football, Argentina; David Beckham, football, England; Neymar, football, Brazil
Kylian Mbappé, football, France; Michael Jordan, basketball, the United States
LeBron James, basketball, the United States; Kobe Bryant, basketball, the United States
Shaquille O'Neal, basketball, the United States; Stephen Curry, basketball, the United States
Magic Johnson, basketball, the United States; Dirk Nowitzki, basketball, Germany
Yao Ming, basketball, China; Roger Federer, tennis, Switzerland; Rafael Nadal, tennis, Spain
Novak Djokovic, tennis, Serbia; Serena Williams, tennis, the United States
Venus Williams, tennis, the United States; Andy Murray, tennis, Scotland; Maria Sharapova, tennis, Russia
Steffi Graf, tennis, Germany; Pete Sampras, tennis, the United States
Andre Agassi, tennis, the United States; Tiger Woods, golf, the United States
Jack Nicklaus, golf, the United States; Rory McIlroy, golf, Northern Ireland
Arnold Palmer, golf, the United States; Phil Mickelson, golf, the United States
Wayne Gretzky, ice hockey, Canada; Sidney Crosby, ice hockey, Canada; Mario Lemieux, ice hockey, Canada
Alex Ovechkin, ice hockey, Russia; Babe Ruth, baseball, the United States
Derek Jeter, baseball, the United States; Sachin Tendulkar, cricket, India; Don Bradman, cricket, Australia
Muhammad Ali, boxing, the United States; Mike Tyson, boxing, the United States
Floyd Mayweather, boxing, the United States
""")
# person, home country, profession, year of birth
PEOPLE = table("""
Albert Einstein, Germany, physicist, 1879; Pablo Picasso, Spain, painter, 1881
William Shakespeare, England, playwright, 1564; Mahatma Gandhi, India, lawyer, 1869
Nelson Mandela, South Africa, lawyer, 1918; Miguel de Cervantes, Spain, writer, 1547
Claude Monet, France, painter, 1840; Giuseppe Verdi, Italy, composer, 1813
Hans Christian Andersen, Denmark, writer, 1805; Alfred Nobel, Sweden, chemist, 1833
Edvard Munch, Norway, painter, 1863; Jean Sibelius, Finland, composer, 1865
Akira Kurosawa, Japan, director, 1910; Frida Kahlo, Mexico, painter, 1907; Leo Tolstoy, Russia, writer, 1828
Dante Alighieri, Italy, poet, 1265; Galileo Galilei, Italy, astronomer, 1564
Leonardo da Vinci, Italy, painter, 1452; Johann Sebastian Bach, Germany, composer, 1685
Nicolaus Copernicus, Poland, astronomer, 1473; Pyotr Tchaikovsky, Russia, composer, 1840
Fyodor Dostoevsky, Russia, writer, 1821; Victor Hugo, France, writer, 1802
Jules Verne, France, writer, 1828; Confucius, China, philosopher, -; Charles Dickens, England, writer, 1812
Gabriel García Márquez, Colombia, writer, 1927; Pablo Neruda, Chile, poet, 1904
Vasco da Gama, Portugal, explorer, -; Aristotle, Greece, philosopher, -; Cleopatra, Egypt, queen, -
Søren Kierkegaard, Denmark, philosopher, 1813; Henrik Ibsen, Norway, playwright, 1828
Hokusai, Japan, painter, 1760; Wolfgang Amadeus Mozart, Austria, composer, 1756
""")

# ----------------------------------------------------------------------------- candidates
HOP_COUNTRY, HOP_CONTINENT = "{} is a city in the country of", "{} is located on the continent of"
REL_PROMPT = {CAPITAL: "The capital of {} is the city of", LANGUAGE: "The official language of {} is",
              CURRENCY: "The currency of {} is the", CONTINENT: HOP_CONTINENT}


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def pick(pool: list[str], i: int, bad) -> str:
    """A deterministic counterfactual: the first admissible object after a row-dependent offset."""
    return next(x for k in range(len(pool)) if not bad(x := pool[(i + 3 + k) % len(pool)]))


def country_fact(country: str | None, rel: int) -> str | None:
    return COUNTRIES.get(country, [None] * 4)[rel]


def moved(stem: str, city: str, new_city: str) -> list[tuple]:
    """Portability of "<subject> is in new_city": its country (one hop) and continent (two hops)."""
    new, old = CITY_COUNTRY[new_city], HOME_CITY_COUNTRY[city]
    hop, continent = (HOP_COUNTRY.format(new_city), new), country_fact(new, CONTINENT)
    port = [(f"{stem} in the country of", new, [hop], old)]
    if continent:
        port.append((f"{stem} on the continent of", continent,
                     [hop, (HOP_CONTINENT.format(cap(new)), continent)], country_fact(old, CONTINENT)))
    return port


def candidates() -> list[dict]:
    """Every candidate: the EditCase fields, locality as (prompt, answer, kind) with kind "subject" or
    "neighbour", and portability as (prompt, answer, hops, answer under the true fact)."""
    out = []

    def add(domain, subject, prompt, truth, new, rephrase, own, rows, i, ask, answer, port):
        near = [rows[(i + k) % len(rows)] for k in range(1, 5)]  # 4 probed so that 2 usually survive
        out.append(dict(domain=domain, subject=subject, prompt=prompt, ground_truth=truth, target_new=new,
                        rephrase_prompts=rephrase, portability=port,
                        locality=[(p, a, "subject") for p, a in own if a]
                        + [(ask(r), answer(r), "neighbour") for r in near if answer(r)]))

    cities = list(CITY_COUNTRY)
    for domain, rows, stem in (("landmark", LANDMARKS, "{} is located"),
                               ("company", COMPANIES, "The headquarters of {} are located")):
        at = lambda x: cap(stem.format(x)) + " in the city of"  # noqa: E731
        for i, (s, city, *facts) in enumerate(rows):
            new = pick(cities, i, lambda c: CITY_COUNTRY[c] == HOME_CITY_COUNTRY[city])
            rephrase = ([f"{cap(s)} can be found in the city of", f"{cap(s)} stands in the city of",
                         f"Visitors who want to see {s} travel to the city of"] if domain == "landmark" else
                        [f"{s} has its headquarters in the city of", f"{s} is headquartered in the city of"])
            own = [(f"{cap(s)} {t.strip()}", a.strip()) for t, a in
                   ((f if "=" in f else "is a famous = " + f).split("=") for f in facts if f)]
            add(domain, s.removeprefix("the "), at(s), city, new, rephrase, own, rows, i,
                lambda r: at(r[0]), lambda r: r[1], moved(cap(stem.format(s)), city, new))

    # Three relations of a country; its other relations are the same-subject locality probes.
    rephrases = {
        CAPITAL: ["The capital city of {} is the city of", "The government of {} sits in the city of"],
        LANGUAGE: ["In {}, the official language is", "The language used by the government of {} is"],
        CURRENCY: ["The official currency of {} is the", "In {}, people pay for things with the"]}
    for rel, domain in ((CAPITAL, "capital"), (LANGUAGE, "language"), (CURRENCY, "currency")):
        rows = [c for c in COUNTRIES if COUNTRIES[c][rel]]
        for i, c in enumerate(rows):
            truth = COUNTRIES[c][rel]
            if rel == CAPITAL:
                new = pick(cities, i, lambda x: CITY_COUNTRY[x] == c)
                port = [(f"The capital of {c} is a city in the country of", CITY_COUNTRY[new],
                         [(HOP_COUNTRY.format(new), CITY_COUNTRY[new])], c)]
            elif rel == LANGUAGE:
                new = pick(list(LANG_ORIGIN), i, lambda x: x == truth)
                port = [(f"The official language of {c} originated in the country of", LANG_ORIGIN[new],
                         [(f"The {new} language originated in the country of", LANG_ORIGIN[new])],
                         LANG_ORIGIN.get(truth))]
            else:  # "in", so that "pound" is no counterfactual for the "Egyptian pound"
                new = pick(list(ISSUER), i, lambda x: x in truth)
                port = [(f"The currency of {c} is issued by the", ISSUER[new],
                         [(f"The {new} is issued by the", ISSUER[new])], ISSUER.get(truth))]
            own = [(cap(REL_PROMPT[r].format(c)), COUNTRIES[c][r]) for r in REL_PROMPT if r != rel]
            add(domain, c.removeprefix("the "), cap(REL_PROMPT[rel].format(c)), truth, new,
                [cap(t.format(c)) for t in rephrases[rel]], own, rows, i,
                lambda r: cap(REL_PROMPT[rel].format(r)), lambda r: COUNTRIES[r][rel], port)

    famous = "{} is famous for playing the".format
    for i, (s, inst, genre, home, band) in enumerate(MUSICIANS):
        new = pick(list(PLAYER), i, lambda x: x == inst)
        add("instrument", s, famous(s), inst, new,
            [f"{s} is best known for playing the", f"The instrument that made {s} famous is the"],
            [(f"{s} is a famous musician in the genre of", genre), (f"{s} came from the country of", home),
             (f"{s} was a member of the band", band)], MUSICIANS, i, lambda r: famous(r[0]), lambda r: r[1],
            [(f"As a musician, {s} is best known as a", PLAYER[new],
              [(f"A person who plays the {new} is called a", PLAYER[new])], PLAYER.get(inst))])

    pro = "{} became famous as a professional".format  # a tense that suits retired and late athletes too
    sport_hops = (("The sport {s} is known for is played on a", "The sport of {n} is played on a"),
                  ("The top professional league in America for the sport {s} is known for is the",
                   "In {n}, the top professional league in America is the"),
                  ("In the sport {s} is known for, players hit the ball with a",
                   "In {n}, players hit the ball with a"))
    for i, (s, sport, home) in enumerate(ATHLETES):
        new = pick(list(SPORTS), i, lambda x: x == sport or not any(SPORTS[x][1:]))
        old, nw = SPORTS[sport], SPORTS[new]
        add("sport", s, pro(s), old[0], nw[0],
            [f"{s} made a name as a professional", f"{s} is best known as a professional"],
            [(f"{s} is a famous sportsperson from", home), (f"{s} represented the country of", home)],
            ATHLETES, i, lambda r: pro(r[0]), lambda r: SPORTS[r[1]][0],
            [(p.format(s=s), nw[k], [(h.format(n=new), nw[k])], old[k])
             for k, (p, h) in enumerate(sport_hops, 1) if nw[k]])

    person = "{} was a famous person from the country of".format
    targets = [c for c in COUNTRIES if COUNTRIES[c][CAPITAL] and COUNTRIES[c][LANGUAGE]]
    for i, (s, home, job, born) in enumerate(PEOPLE):
        new = pick(targets, i, lambda x: x == home)
        lang, capital = COUNTRIES[new][LANGUAGE], COUNTRIES[new][CAPITAL]
        add("nationality", s, person(s), home, new,
            [f"{s} came from the country of", f"The homeland of {s} was the country of"],
            [(f"{s} earned a living as a", job), (f"{s} was born in the year", born)], PEOPLE, i,
            lambda r: person(r[0]), lambda r: r[1],
            [(f"The native language of {s} was", lang, [(REL_PROMPT[LANGUAGE].format(new), lang)],
              country_fact(home, LANGUAGE)),
             (f"{s} came from a country whose capital is the city of", capital,
              [(REL_PROMPT[CAPITAL].format(new), capital)], country_fact(home, CAPITAL))])
    return out

# ----------------------------------------------------------------------------- the check

def normalise(text: str) -> list[str]:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    words = re.sub(r"[^\w\s]", "", text.replace("-", " ")).split()
    return words[1:] if words[:1] == ["the"] else words


def says(continuation: str, answer: str | None) -> bool:
    """Whether the continuation starts with the answer, word for word after normalising both."""
    want = normalise(answer or "")
    return bool(want) and normalise(continuation)[:len(want)] == want


def generate_all(prompts: list[str], batch_size: int = 32, max_new_tokens: int = 8) -> dict[str, str]:
    """Greedy continuation of every distinct prompt."""
    import torch
    from kedit_teach.models import encode_prompts, format_prompt, load_model
    model, tok = load_model()
    # Sorted by length: little padding, and the same batches on every run.
    todo = sorted(set(prompts), key=lambda p: (len(tok(p)["input_ids"]), p))
    out = {}
    for b in range(0, len(todo), batch_size):
        batch = todo[b:b + batch_size]
        enc = encode_prompts(tok, [format_prompt(tok, p) for p in batch], model.device)
        with torch.no_grad():
            gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=tok.pad_token_id)
        out.update(zip(batch, tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)))
        print(f"  generated {len(out)}/{len(todo)}", end="\r", file=sys.stderr)
    print(file=sys.stderr)
    return out


def check(cands: list[dict], said: dict[str, str]) -> tuple[list[dict], Counter]:
    kept, dropped = [], Counter()
    for c in cands:
        cont = said[c["prompt"]]
        own = [(p, a) for p, a, kind in c["locality"] if kind == "subject" and says(said[p], a)][:2]
        near = [(p, a) for p, a, kind in c["locality"] if kind == "neighbour" and says(said[p], a)][:2]
        port = [(p, a) for p, a, hops, old in c["portability"]
                if all(says(said[h], ha) for h, ha in hops) and normalise(a) != normalise(old or "")]
        if normalise(c["target_new"]) == normalise(c["ground_truth"]) or says(cont, c["target_new"]):
            dropped["prompt: target_new equals the truth or is produced already"] += 1
        elif not says(cont, c["ground_truth"]):
            dropped["prompt: model does not produce the ground truth"] += 1
        elif not own or not near:
            dropped["locality: no known same-subject or no known neighbour probe"] += 1
        elif not port:
            dropped["portability: no probe whose hops the model knows"] += 1
        else:
            kept.append({**c, "locality": own + near, "portability": port})
    return kept, dropped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "kedit_teach" / "assets" / "teach.jsonl"))
    args = ap.parse_args()
    t0 = time.time()
    cands = candidates()
    said = generate_all([p for c in cands for p in [c["prompt"]] + [p for p, _, _ in c["locality"]]
                         + [h for _, _, hops, _ in c["portability"] for h, _ in hops]])
    kept, dropped = check(cands, said)

    from kedit_teach.data import EditCase, save_jsonl
    cases = [EditCase(case_id=f"teach-{n:03d}", source="teach", **{k: c[k] for k in (
        "subject", "prompt", "target_new", "ground_truth", "rephrase_prompts", "locality", "portability")})
        for n, c in enumerate(kept)]
    save_jsonl(sorted(cases, key=lambda e: e.case_id), args.out)
    lines = Path(args.out).read_text(encoding="utf-8").splitlines()
    assert [EditCase.from_dict(json.loads(line)) for line in lines] == cases, "JSONL round trip failed"

    total, per_domain = Counter(c["domain"] for c in cands), Counter(c["domain"] for c in kept)
    print(f"candidates: {len(cands)}, kept: {len(kept)}, distinct prompts generated: {len(said)}")
    for reason, n in dropped.most_common():
        print(f"  dropped {n:3d}  {reason}")
    print("kept / candidates per domain: " + ", ".join(f"{d} {per_domain[d]}/{total[d]}" for d in total))
    n = {k: sum(len(c[k]) for c in kept) for k in ("rephrase_prompts", "locality", "portability")}
    print(f"probes: {n['rephrase_prompts']} rephrasings, {n['locality']} locality, "
          f"{n['portability']} portability")
    print(f"wrote {args.out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
