"""The embedded synthetic corpus: short English-like stories from a probabilistic grammar whose entropy is known.

TRUSTED CODE (host only; never imported by the harness or the evaluator). Every random decision goes through
`Chooser.pick`, and the map from decisions to text is injective: the text reads back into exactly one sequence of
decisions (tests prove it with `parse`, an exhaustive search). Hence log p(text) = sum of log p(decisions), and
the manifest records the exact entropy of the validation text: the BPB floor that no model can beat.

What a model can learn, from easy to hard: fixed template words and Zipfian word choices (most of the entropy);
choices conditioned on local context ("a"/"an", singular/plural, a verb that fits the animal); characters named
with a first and a family name ("Lily Ross") and referred to later by the full name, a pronoun (the subject of the
previous character sentence) or "the <animal>", a repeat being free to a model that copies from earlier in the
story (attention) and about 6 bits to one that cannot; objects found earlier and given away later; arithmetic,
about once per story ("had 3 apples ... found 4 more ... Now she had 7 apples"). Copying and arithmetic are learnt
last: they keep the data hard at short budgets (docs/benchmarks.md). The end of a story is paid for inside the
text: only the last sentence begins "In the end," and nothing follows its full stop, so the next token (BOS, which
the evaluator does not charge) is certain.
"""
from __future__ import annotations

import math
import random
from bisect import bisect_right
from dataclasses import dataclass

from .lexicon import (ADD_COUNT, ADD_VERB, ADVERB, ANIMALS, CHAR_ADJ, CONNECTIVE, CONTINUE, COUNTABLE, Dist,
    ENDING, EVENT_ONE, EVENT_TWO, FEELING, FEEL_VERB, FIND_VERB, FORM_OTHER, FORM_SAME, GAME, GIVE_OP,
    HAS_HOME, HOME, INTENSITY, LAND, LIST_LEN, MOVES, MOVE_VERB, NAMES, OBJECT_PRONOUN, OBJ_FORM, OP, OPENING,
    PLACE_ADJ, PLURAL, POSSESSIVE, PREP, PRONOUN, QUESTION, SAME, SAY_VERB, SCENE, SEE_VERB, SHOUT, SIZE, SPOT,
    START_COUNT, SUB_VERB, SURNAMES, THINGS, THING_ADJ, TWO, WATER, article, uniform)

GRAMMAR_VERSION = "stories/2"
MAX_EVENTS = 10        # a story stops after this many events (the stop is then certain, which costs nothing)
MAX_CHARS = 640         # ... or once its text is this long (also readable from the text, so still exact)


# --------------------------------------------------------------------------- choosers

class Chooser:
    """Makes every random decision of one story and collects its text (n_chars: its length so far)."""

    n_chars = 0

    def pick(self, dist: Dist, exclude=()) -> int:
        raise NotImplementedError

    def say(self, text: str) -> None:
        raise NotImplementedError


class Sampler(Chooser):
    """Samples decisions from a seeded `random.Random` and sums their cost in bits."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.parts: list[str] = []
        self.bits = 0.0
        self.trace: list[int] | None = None

    def pick(self, dist, exclude=()):
        rnd, cum = self.rng.random, dist.cum
        last = len(cum) - 1
        i = min(bisect_right(cum, rnd()), last)
        while i in exclude:                     # rejection = sampling from the renormalized distribution
            i = min(bisect_right(cum, rnd()), last)
        if exclude:
            kept = 1.0 - sum(dist.probs[j] for j in exclude)
            self.bits += dist.bits[i] + math.log2(kept)
        else:
            self.bits += dist.bits[i]
        if self.trace is not None:
            self.trace.append(i)
        return i

    def say(self, text):
        self.parts.append(text)
        self.n_chars += len(text)


@dataclass
class Character:
    name: str           # first and family name: "Lily Ross"
    pronoun: str        # "he" | "she"
    animal: str
    moves: str


# --------------------------------------------------------------------------- the grammar
# Rule of thumb that keeps `parse` fast: say the text of every decision right after making it.

def story(ch: Chooser) -> None:
    """Generate one story through `ch` (the single source of truth for the grammar)."""
    say, pick = ch.say, ch.pick
    say(OPENING.words[pick(OPENING)])
    adj = CHAR_ADJ.words[pick(CHAR_ADJ)]
    say(f" {article(adj)} {adj} ")
    animal1 = pick(ANIMALS)
    say(f"{ANIMALS.words[animal1]} named ")
    name1 = pick(NAMES)
    say(NAMES.words[name1])
    c1 = _character(name1, _surname(ch), animal1)
    chars = [c1]
    if TWO.words[pick(TWO)] == "two":
        adj2 = CHAR_ADJ.words[pick(CHAR_ADJ)]
        say(f" {c1.pronoun.capitalize()} had a friend, {article(adj2)} {adj2} ")
        animal2 = pick(ANIMALS, exclude=(animal1,))
        say(f"{ANIMALS.words[animal2]} named ")
        name2 = pick(NAMES, exclude=(name1,))
        say(NAMES.words[name2])
        chars.append(_character(name2, _surname(ch), animal2))
    if HAS_HOME.words[pick(HAS_HOME)] == "yes":
        home = HOME.words[pick(HOME)]
        say(f" {c1.name} lived in {article(home)} {home} near the ")
        _place(ch, c1)
        say(".")
    state = _State(chars=chars, topic=0, found=[])
    events = EVENT_TWO if len(chars) == 2 else EVENT_ONE
    n = 0
    while True:
        _EVENTS[events.words[pick(events)]](ch, state)
        n += 1
        if n == MAX_EVENTS or ch.n_chars >= MAX_CHARS or CONTINUE.words[pick(CONTINUE)] == "stop":
            break
    say(" In the end, ")
    _subject(ch, state, capital=False)
    say(f" {ENDING.words[pick(ENDING)]}.")


@dataclass
class _State:
    chars: list
    topic: int          # index of the character a pronoun refers to
    found: list         # indices into THINGS of objects found so far (distinct)


def _surname(ch: Chooser) -> str:
    """ " Ross.": the family name that ends a character's introduction."""
    sur = SURNAMES.words[ch.pick(SURNAMES)]
    ch.say(f" {sur}.")
    return sur


def _character(name_i: int, surname: str, animal_i: int) -> Character:
    first, animal = NAMES.words[name_i], ANIMALS.words[animal_i]
    return Character(f"{first} {surname}", PRONOUN[first], animal, MOVES[animal])


def _place(ch: Chooser, c: Character) -> None:
    d = WATER if c.moves == "swim" else LAND
    ch.say(d.words[ch.pick(d)])


def _subject(ch: Chooser, state: _State, capital: bool) -> Character:
    """Choose who acts next and how they are named, say it; the chosen character becomes the topic."""
    who = state.topic
    if len(state.chars) == 2 and SAME.words[ch.pick(SAME)] == "other":
        who = 1 - state.topic
        form = FORM_OTHER.words[ch.pick(FORM_OTHER)]
    else:
        form = FORM_SAME.words[ch.pick(FORM_SAME)]
    state.topic = who
    c = state.chars[who]
    if form == "name":
        ch.say(c.name)
    else:
        text = c.pronoun if form == "pronoun" else f"the {c.animal}"
        ch.say(text.capitalize() if capital else text)
    return c


def _object(ch: Chooser, state: _State) -> Character:
    """Say the character who is not the topic (two-character stories only), named as an object."""
    c = state.chars[1 - state.topic]
    form = OBJ_FORM.words[ch.pick(OBJ_FORM)]
    if form == "name":
        ch.say(c.name)
    else:
        ch.say(OBJECT_PRONOUN[c.pronoun] if form == "pronoun" else f"the {c.animal}")
    return c


def _lead(ch: Chooser, state: _State) -> Character:
    """A space, an optional connective, then the subject (capitalized only at the start of the sentence)."""
    conn = CONNECTIVE.words[ch.pick(CONNECTIVE)]
    ch.say(" " + conn)
    return _subject(ch, state, capital=not conn)


def _move(ch, state):
    c = _lead(ch, state)
    verb = MOVE_VERB[c.moves]
    ch.say(" " + verb.words[ch.pick(verb)])
    ch.say(ADVERB.words[ch.pick(ADVERB)] + " to the " + PLACE_ADJ.words[ch.pick(PLACE_ADJ)])
    _place(ch, c)
    ch.say(".")


def _find(ch, state):
    _lead(ch, state)
    ch.say(f" {FIND_VERB.words[ch.pick(FIND_VERB)]} ")
    _adjectives(ch)
    thing = ch.pick(THINGS, exclude=tuple(state.found))
    state.found.append(thing)
    ch.say(f"{THINGS.words[thing]} {PREP.words[ch.pick(PREP)]} the ")
    ch.say(SPOT.words[ch.pick(SPOT)] + ".")


def _adjectives(ch: Chooser) -> None:
    """ "a big red " / "an orange ": an optional size word, then a colour, with the article they need."""
    size = SIZE.words[ch.pick(SIZE)]
    if size:
        ch.say(f"{article(size)} {size}")
    adj = THING_ADJ.words[ch.pick(THING_ADJ)]
    ch.say(f"{adj} " if size else f"{article(adj)} {adj} ")


def _item(ch: Chooser) -> None:
    _adjectives(ch)
    ch.say(THINGS.words[ch.pick(THINGS)])


def _see(ch, state):
    """A list of two or three things: dense, local choices."""
    _lead(ch, state)
    ch.say(" " + SEE_VERB.words[ch.pick(SEE_VERB)] + " ")
    n = int(LIST_LEN.words[ch.pick(LIST_LEN)])
    for k in range(n):
        if k:
            ch.say(" and " if k == n - 1 else ", ")
        _item(ch)
    ch.say(".")


def _feel(ch, state):
    _lead(ch, state)
    verb = FEEL_VERB.words[ch.pick(FEEL_VERB)]
    ch.say(f" {verb} {INTENSITY.words[ch.pick(INTENSITY)]}")
    ch.say(FEELING.words[ch.pick(FEELING)] + ".")


def _say(ch, state):
    _lead(ch, state)
    verb = SAY_VERB.words[ch.pick(SAY_VERB)]
    if verb == "asked":
        ch.say(' asked, "')
        ch.say(QUESTION.words[ch.pick(QUESTION)] + '?"')
    else:
        ch.say(f' {verb}, "')
        ch.say(SHOUT.words[ch.pick(SHOUT)] + '!"')


def _count(ch, state):
    c = _lead(ch, state)
    a = int(START_COUNT.words[ch.pick(START_COUNT)])
    ch.say(f" had {a} ")
    item = COUNTABLE.words[ch.pick(COUNTABLE)]
    ch.say(f"{PLURAL[item]}. {c.pronoun.capitalize()} ")
    if OP.words[ch.pick(OP)] == "add":
        ch.say(ADD_VERB.words[ch.pick(ADD_VERB)])
        b = int(ADD_COUNT.words[ch.pick(ADD_COUNT)])
        ch.say(f" {b} more.")
        total = a + b
    else:
        ch.say(SUB_VERB.words[ch.pick(SUB_VERB)])
        sub = _SUB_COUNT[a]
        b = int(sub.words[ch.pick(sub)])
        ch.say(f" {b} of them.")
        total = a - b
    ch.say(f" Now {c.pronoun} had {total} {item if total == 1 else PLURAL[item]}.")


_SUB_COUNT = {a: uniform([str(n) for n in range(1, a)]) for a in range(2, 10)}
_WHICH = [uniform([str(i) for i in range(n)]) for n in range(1, MAX_EVENTS + 1)]


def _play(ch, state):
    _lead(ch, state)
    ch.say(f" played {GAME.words[ch.pick(GAME)]} with ")
    _object(ch, state)
    ch.say(".")


def _give(ch, state):
    _lead(ch, state)
    if state.found:  # one of the objects found so far (distinct, so "the <thing>" names exactly one)
        which = _WHICH[len(state.found) - 1]
        ch.say(f" gave the {THINGS.words[state.found[ch.pick(which)]]} to ")
        _object(ch, state)
        ch.say(".")
        return
    verb = GIVE_OP.words[ch.pick(GIVE_OP)]
    if verb == "give":
        ch.say(" gave ")
        _object(ch, state)
        item = COUNTABLE.words[ch.pick(COUNTABLE)]
        ch.say(f" {article(item)} {item}.")
    else:
        item = COUNTABLE.words[ch.pick(COUNTABLE)]
        ch.say(f" shared {article(item)} {item} with ")
        _object(ch, state)
        ch.say(".")


def _help(ch, state):
    _lead(ch, state)
    ch.say(" helped ")
    other = _object(ch, state)
    ch.say(f" find {POSSESSIVE[other.pronoun]} way to the ")
    _place(ch, other)
    ch.say(".")


def _scene(ch, state):
    ch.say(" " + SCENE.words[ch.pick(SCENE)])


_EVENTS = {"move": _move, "find": _find, "see": _see, "feel": _feel, "say": _say, "count": _count, "play": _play,
           "give": _give, "help": _help, "scene": _scene}


# --------------------------------------------------------------------------- sampling

def generate(seed: int, n_docs: int, stream: str = "train", with_trace: bool = False):
    """Yield (text, bits) for n_docs stories; deterministic in (seed, stream). bits = -log2 p(text).

    With with_trace=True, yield (text, bits, trace) where trace is the list of decision indices.
    """
    rng = random.Random(f"{GRAMMAR_VERSION}|{stream}|{seed}")
    for _ in range(n_docs):
        s = Sampler(rng)
        if with_trace:
            s.trace = []
        story(s)
        text = "".join(s.parts)
        yield (text, s.bits, s.trace) if with_trace else (text, s.bits)


# --------------------------------------------------------------------------- reading a story back

class _Branch(Exception):
    def __init__(self, options):
        self.options = options


class _Mismatch(Exception):
    pass


class _Replayer(Chooser):
    """Replays a fixed prefix of decisions against a target text; stops at the first unknown decision."""

    def __init__(self, target: str, prefix: list[int]):
        self.target, self.prefix, self.pos = target, prefix, 0
        self.text_len, self.k, self.bits = 0, 0, 0.0

    def pick(self, dist, exclude=()):
        if self.k == len(self.prefix):
            rest = self.target[self.text_len:]
            literal = id(dist) in _LITERAL  # its word is said verbatim later: it must occur in the rest
            raise _Branch([i for i in range(len(dist)) if i not in exclude and (not literal or dist.words[i] in rest)])
        i = self.prefix[self.k]
        self.k += 1
        kept = 1.0 - sum(dist.probs[j] for j in exclude)
        self.bits += dist.bits[i] + (math.log2(kept) if exclude else 0.0)
        return i

    def say(self, text):
        end = self.text_len + len(text)
        if self.target[self.text_len:end] != text:
            raise _Mismatch()
        self.text_len = self.n_chars = end


# Distributions whose chosen word is always said verbatim after the choice (checked by hand for every use above):
# `parse` skips options whose word does not occur in the rest of the text, which never drops a possible reading.
_LITERAL = {id(d) for d in (NAMES, SURNAMES, ANIMALS, CHAR_ADJ, THINGS, LAND, WATER, THING_ADJ, FEELING, SPOT)}


def parse(text: str, limit: int = 200_000) -> list[tuple[list[int], float]]:
    """Every decision sequence that generates exactly `text`, with its cost in bits (exhaustive search).

    For an injective grammar the answer has exactly one element for any generated story.
    """
    found, stack, steps = [], [[]], 0
    while stack:
        prefix = stack.pop()
        steps += 1
        if steps > limit:
            raise RuntimeError(f"parse gave up after {limit} replays")
        r = _Replayer(text, prefix)
        try:
            story(r)
        except _Mismatch:
            continue
        except _Branch as b:
            stack.extend(prefix + [i] for i in reversed(b.options))
            continue
        if r.text_len == len(text):
            found.append((prefix, r.bits))
    return found
