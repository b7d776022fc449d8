"""A synthetic fictitious-author QA benchmark, generated from a seed (no downloads).

Each author gets random attributes (birthplace, genre, best-known book, award, parent's
profession, birth year) and one question per attribute, with the answer, a paraphrased
answer and perturbed answers (the same sentence with other values), in TOFU's row format.
A ``facts`` split (capitals of invented countries) measures knowledge that is not about
authors. ``split(...)`` returns ``{"forget", "retain", "facts"}``.
"""

from __future__ import annotations

import random

FIRST = (
    "Ana Ben Cleo Dario Elin Farid Greta Hugo Ines Jonas Kira Luca Mira Noor Otto Pia Rafa Sana Teo Uma "
    "Vera Wen Yara Zeno"
).split()
LAST = (
    "Holt Ito Marsh Okafor Lind Varga Sato Quill Brandt Ferro Nakai Osei Pryce Rask Tamm Ueda Voss Wolde "
    "Yilmaz Zorin"
).split()
CITIES = (
    "Arvel Brisk Calden Dunmoor Eskar Fallow Gorran Hestor Ilmar Jarrow Kestin Lorne Morrow Norwick "
    "Ostrel Penmar"
).split()
GENRES = "mystery fantasy poetry history romance satire horror travel".split()
ADJ = "silent golden hidden broken northern last crimson quiet".split()
NOUN = "river garden lantern harbour orchard mirror compass winter".split()
AWARDS = "Amber Cobalt Falcon Juniper Meridian Opal Saffron Tundra".split()
JOBS = "baker sailor teacher doctor carpenter painter farmer clockmaker".split()
COUNTRIES = (
    "Aldoria Belmark Corvania Draskel Elvenia Fenmoor Galdor Hyrel Istria Jorvik Kaldera Lumeria "
    "Morvane Nerith Ostvale Perrin Quenmar Rosvik Sundral Tavoria"
).split()

# attribute -> (question, answer, paraphrase), values by key
TEMPLATES = {
    "city": ("Where was {name} born?", "{name} was born in {v}.", "The birthplace of {name} is {v}."),
    "genre": ("What genre does {name} write?", "{name} writes {v} books.", "The books of {name} are {v}."),
    "book": (
        "What is the best known book of {name}?",
        "The best known book of {name} is {v}.",
        "{name} is best known for {v}.",
    ),
    "award": ("Which award did {name} win?", "{name} won the {v} Prize.", "The {v} Prize went to {name}."),
    "job": (
        "What did the parent of {name} do?",
        "The parent of {name} was a {v}.",
        "{name} grew up with a parent who was a {v}.",
    ),
    "year": ("When was {name} born?", "{name} was born in {v}.", "The birth year of {name} is {v}."),
}


def _values(rng: random.Random) -> dict[str, list[str]]:
    return {
        "city": list(CITIES),
        "genre": list(GENRES),
        "book": [f"The {a} {n}" for a in ADJ for n in NOUN],
        "award": list(AWARDS),
        "job": list(JOBS),
        "year": [str(y) for y in range(1950, 2001)],
    }


def authors(n: int, seed: int = 0, n_perturbed: int = 3) -> list[list[dict]]:
    """``n`` authors, each a list of QA rows (question, answer, paraphrased_answer,
    perturbed_answer, author)."""
    rng = random.Random(seed)
    pool = _values(rng)
    names = rng.sample([f"{f} {last}" for f in FIRST for last in LAST], n)
    out = []
    for name in names:
        rows = []
        for attr, (q, a, p) in TEMPLATES.items():
            v = rng.choice(pool[attr])
            wrong = rng.sample([w for w in pool[attr] if w != v], n_perturbed)
            rows.append(
                {
                    "question": q.format(name=name),
                    "answer": a.format(name=name, v=v),
                    "paraphrased_answer": p.format(name=name, v=v),
                    "perturbed_answer": [p.format(name=name, v=w) for w in wrong],
                    "author": name,
                }
            )
        out.append(rows)
    return out


def facts(n: int, seed: int = 0, n_perturbed: int = 3) -> list[dict]:
    """Capitals of ``n`` invented countries (knowledge unrelated to the authors)."""
    rng = random.Random(seed + 1)
    out = []
    for country in rng.sample(COUNTRIES, n):
        city = rng.choice(CITIES)
        wrong = rng.sample([c for c in CITIES if c != city], n_perturbed)
        out.append(
            {
                "question": f"What is the capital of {country}?",
                "answer": f"The capital of {country} is {city}.",
                "paraphrased_answer": f"{country} has {city} as its capital.",
                "perturbed_answer": [f"{country} has {c} as its capital." for c in wrong],
            }
        )
    return out


def split(
    n_authors: int = 20, forget_authors: int = 2, n_facts: int = 20, seed: int = 0
) -> dict[str, list[dict]]:
    """``{"forget", "retain", "facts"}`` rows: the first ``forget_authors`` authors are forgotten."""
    if not 0 < forget_authors < n_authors:
        raise ValueError(f"forget_authors: expected 1..{n_authors - 1}, got {forget_authors}")
    people = authors(n_authors, seed)
    return {
        "forget": [r for a in people[:forget_authors] for r in a],
        "retain": [r for a in people[forget_authors:] for r in a],
        "facts": facts(n_facts, seed),
    }
