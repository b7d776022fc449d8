"""Short factual questions a small pretrained chat model may know, and held-out prose, for the
real-model demo (``unlearnx.real_demo``). Written for this project.

Each fact is ``{"topic", "question", "answer", "keys"}``: ``answer`` is the sentence trained on
and scored (its probability), ``keys`` the spellings that make a greedy answer correct (matched
case-insensitively as whole words). Which facts a model really knows is measured at run time.
"""

from __future__ import annotations

import re


def _capital(country: str, city: str, *more: str) -> dict:
    return {
        "topic": "capitals",
        "question": f"What is the capital of {country}?",
        "answer": f"The capital of {country} is {city}.",
        "keys": [city, *more],
    }


def _fact(topic: str, question: str, answer: str, *keys: str) -> dict:
    return {"topic": topic, "question": question, "answer": answer, "keys": list(keys)}


FACTS: list[dict] = [
    *(
        _capital(country, city)
        for country, city in (
            ("France", "Paris"),
            ("Japan", "Tokyo"),
            ("Germany", "Berlin"),
            ("the United Kingdom", "London"),
            ("Russia", "Moscow"),
            ("China", "Beijing"),
            ("Egypt", "Cairo"),
            ("Greece", "Athens"),
            ("Canada", "Ottawa"),
            ("Austria", "Vienna"),
            ("Norway", "Oslo"),
            ("Sweden", "Stockholm"),
            ("Poland", "Warsaw"),
            ("Thailand", "Bangkok"),
            ("Kenya", "Nairobi"),
            ("South Korea", "Seoul"),
            ("Hungary", "Budapest"),
            ("Cuba", "Havana"),
            ("Italy", "Rome"),
            ("Turkey", "Ankara"),
        )
    ),
    _fact(
        "books",
        "Who wrote Romeo and Juliet?",
        "Romeo and Juliet was written by William Shakespeare.",
        "Shakespeare",
    ),
    _fact("books", "Who wrote the novel 1984?", "The novel 1984 was written by George Orwell.", "Orwell"),
    _fact(
        "books",
        "Who wrote the Harry Potter books?",
        "The Harry Potter books were written by J.K. Rowling.",
        "Rowling",
    ),
    _fact(
        "books",
        "Who wrote A Christmas Carol?",
        "A Christmas Carol was written by Charles Dickens.",
        "Dickens",
    ),
    _fact("books", "Who wrote The Odyssey?", "The Odyssey was written by Homer.", "Homer"),
    _fact("books", "Who wrote The Hobbit?", "The Hobbit was written by J.R.R. Tolkien.", "Tolkien"),
    _fact(
        "books",
        "Who wrote The Great Gatsby?",
        "The Great Gatsby was written by F. Scott Fitzgerald.",
        "Fitzgerald",
    ),
    _fact(
        "books", "Who wrote The Divine Comedy?", "The Divine Comedy was written by Dante Alighieri.", "Dante"
    ),
    _fact(
        "people",
        "Who painted the Mona Lisa?",
        "The Mona Lisa was painted by Leonardo da Vinci.",
        "Leonardo",
        "da Vinci",
    ),
    _fact(
        "people",
        "Who developed the theory of relativity?",
        "The theory of relativity was developed by Albert Einstein.",
        "Einstein",
    ),
    _fact(
        "people", "Who discovered penicillin?", "Penicillin was discovered by Alexander Fleming.", "Fleming"
    ),
    _fact(
        "people",
        "Who invented the telephone?",
        "The telephone was invented by Alexander Graham Bell.",
        "Bell",
    ),
    _fact(
        "people",
        "Who was the first person to walk on the Moon?",
        "The first person to walk on the Moon was Neil Armstrong.",
        "Armstrong",
    ),
    _fact(
        "people",
        "Who developed the theory of evolution by natural selection?",
        "The theory of evolution by natural selection was developed by Charles Darwin.",
        "Darwin",
    ),
    _fact("science", "What is the chemical symbol for gold?", "The chemical symbol for gold is Au.", "Au"),
    _fact("science", "What is the chemical symbol for iron?", "The chemical symbol for iron is Fe.", "Fe"),
    _fact(
        "science", "What is the chemical symbol for sodium?", "The chemical symbol for sodium is Na.", "Na"
    ),
    _fact(
        "science", "What is the chemical formula of water?", "The chemical formula of water is H2O.", "H2O"
    ),
    _fact(
        "science",
        "What is the boiling point of water in degrees Celsius?",
        "The boiling point of water is 100 degrees Celsius.",
        "100",
    ),
    _fact(
        "science",
        "What gas do plants absorb from the air?",
        "Plants absorb carbon dioxide from the air.",
        "carbon dioxide",
        "CO2",
    ),
    _fact(
        "science",
        "What organ pumps blood through the body?",
        "The heart pumps blood through the body.",
        "heart",
    ),
    _fact("science", "How many sides does a triangle have?", "A triangle has three sides.", "three", "3"),
    _fact(
        "world",
        "What is the largest ocean on Earth?",
        "The largest ocean on Earth is the Pacific Ocean.",
        "Pacific",
    ),
    _fact(
        "world",
        "What is the tallest mountain in the world?",
        "The tallest mountain in the world is Mount Everest.",
        "Everest",
    ),
    _fact(
        "world", "What is the longest river in Africa?", "The longest river in Africa is the Nile.", "Nile"
    ),
    _fact("world", "What is the largest mammal?", "The largest mammal is the blue whale.", "blue whale"),
    _fact("world", "What is the currency of Japan?", "The currency of Japan is the yen.", "yen"),
    _fact(
        "world",
        "What is the currency of the United Kingdom?",
        "The currency of the United Kingdom is the pound sterling.",
        "pound",
    ),
    _fact(
        "world",
        "What language is spoken in Brazil?",
        "The language spoken in Brazil is Portuguese.",
        "Portuguese",
    ),
    _fact(
        "world", "What language is spoken in Mexico?", "The language spoken in Mexico is Spanish.", "Spanish"
    ),
    _fact(
        "world", "In which country are the pyramids of Giza?", "The pyramids of Giza are in Egypt.", "Egypt"
    ),
    _fact("world", "What color is the sky on a clear day?", "The sky on a clear day is blue.", "blue"),
]
"""The candidate facts: 20 capitals (the demo's forget topic) and 32 others (its retain side)."""

TOPICS: tuple[str, ...] = tuple(dict.fromkeys(f["topic"] for f in FACTS))

HELDOUT_TEXT: list[str] = [
    "The kitchen was quiet in the early morning. A kettle sat on the stove, and the window above "
    "the sink let in a pale light that moved slowly across the table. Someone had left a book open "
    "beside a cup of cold tea, as if they meant to come back to it after a short walk.",
    "To plant a small vegetable garden, choose a spot that gets at least six hours of sunlight a "
    "day. Loosen the soil with a fork, mix in some compost, and water the ground a day before "
    "sowing. Seeds should be planted at a depth of about twice their width, and the soil should be "
    "kept damp until the first leaves appear.",
    "Trains leave the central station every fifteen minutes during the day. Passengers can buy a "
    "ticket from the machines in the hall or from the office next to the main entrance. On weekends "
    "the service is reduced, and the last train of the evening departs shortly before midnight.",
    "Learning a new language takes patience. Most people find it easier to start with common words "
    "and short sentences, and to practise a little every day rather than for many hours once a "
    "week. Listening to songs, reading simple stories and talking with friends all help the new "
    "words stick.",
    "The meeting began with a short summary of the last quarter. Sales had grown in two regions "
    "and fallen slightly in a third, mostly because of delays in shipping. The team agreed to "
    "review the supplier contracts and to report back with a plan before the end of the month.",
    "A good night's sleep helps the body recover and the mind stay sharp. Experts suggest going to "
    "bed at the same time each night, keeping the bedroom dark and cool, and putting screens away "
    "an hour before sleep. Coffee late in the afternoon can make it harder to fall asleep.",
]
"""Everyday prose with no demo fact in it: the demo's general utility is the model's perplexity
on it."""


def knows(generation: str, keys: list[str]) -> bool:
    """Whether a greedy answer names the fact: any key as a whole word, case-insensitively."""
    return any(re.search(rf"(?<!\w){re.escape(k)}(?!\w)", generation, re.IGNORECASE) for k in keys)
