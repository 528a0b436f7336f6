"""The lexicon of the synthetic stories: every word list and the probability of each word (TRUSTED, host only).

A `Dist` is a fixed distribution over strings. Word lists are Zipfian (weight 1/(rank+offset)^s, in list order);
small structural choices are explicit tables. `trainer.prepare.synthetic` holds the grammar that uses them.
Changing anything here changes the corpus: bump `synthetic.GRAMMAR_VERSION`.
"""
from __future__ import annotations

import math

ZIPF_S = 0.8            # exponent of the Zipfian word distributions
CONTINUE_P = 0.85       # probability of another event after each event


class Dist:
    """A fixed distribution over a list of strings; sampling by inverse CDF, costs in bits."""

    __slots__ = ("words", "probs", "cum", "bits")

    def __init__(self, words, weights):
        if len(set(words)) != len(words):
            raise ValueError(f"duplicate words in a distribution: {words}")
        total = float(sum(weights))
        self.words = list(words)
        self.probs = [w / total for w in weights]
        acc, self.cum = 0.0, []
        for p in self.probs:
            acc += p
            self.cum.append(acc)
        self.cum[-1] = 1.0
        self.bits = [-math.log2(p) for p in self.probs]

    def __len__(self):
        return len(self.words)


def zipf(words, s=ZIPF_S, offset=1.0):
    """Weights 1/(rank+offset)^s in list order."""
    return Dist(words, [1.0 / (r + offset) ** s for r in range(len(words))])


def table(pairs):
    return Dist([w for w, _ in pairs], [p for _, p in pairs])


def uniform(words):
    return Dist(words, [1.0] * len(words))


# --------------------------------------------------------------------------- vocabulary

_NAMES = [  # (name, pronoun); interleaved so both genders are common
    ("Lily", "she"), ("Tom", "he"), ("Mia", "she"), ("Ben", "he"), ("Anna", "she"), ("Max", "he"),
    ("Emma", "she"), ("Sam", "he"), ("Lucy", "she"), ("Leo", "he"), ("Sara", "she"), ("Jack", "he"),
    ("Ella", "she"), ("Tim", "he"), ("Zoe", "she"), ("Finn", "he"), ("Ruby", "she"), ("Noah", "he"),
    ("Rosa", "she"), ("Oscar", "he"), ("Nora", "she"), ("Luke", "he"), ("Ivy", "she"), ("Jake", "he"),
    ("Amy", "she"), ("Owen", "he"), ("Kate", "she"), ("Eli", "he"), ("Lena", "she"), ("Hugo", "he"),
    ("Maya", "she"), ("Ian", "he"), ("Daisy", "she"), ("Kai", "he"), ("Molly", "she"), ("Liam", "he"),
    ("Hannah", "she"), ("Milo", "he"), ("Julia", "she"), ("Ned", "he"), ("Clara", "she"), ("Otto", "he"),
    ("Alice", "she"), ("Pete", "he"), ("Grace", "she"), ("Rex", "he"), ("Chloe", "she"), ("Seth", "he"),
    ("Sophie", "she"), ("Theo", "he"), ("Fiona", "she"), ("Victor", "he"), ("Greta", "she"), ("Wade", "he"),
    ("Hazel", "she"), ("Zack", "he"), ("Iris", "she"), ("Adam", "he"), ("Jenny", "she"), ("Bruno", "he"),
    ("Kira", "she"), ("Carl", "he"), ("Luna", "she"), ("Dan", "he"), ("Olive", "she"), ("Felix", "he"),
]
NAMES = zipf([n for n, _ in _NAMES], s=ZIPF_S, offset=2.0)
PRONOUN = dict(_NAMES)
SURNAMES = uniform("""Ross Cole Reed Wood Brook Moss Lane Hart Dale Ford Grant Hale Knox Lowe Marsh Nash Page Quinn
    Rowe Shaw Tate Vance Wells Banks Carter Dean Ellis Flynn Hayes Jones Kemp Lloyd Miles North Oakes Price Reyes
    Scott Todd Walsh Webb Boyd Clay Drake Frost Gibbs Holt Irwin Judd Kerr Lyons Mayer Nolan Olson Pratt Rhodes
    Sharp Swift Troy Ward Voss Yates Pike Beck""".split())  # a character's family name, said with every mention
OBJECT_PRONOUN = {"he": "him", "she": "her"}
POSSESSIVE = {"he": "his", "she": "her"}

_ANIMALS = [  # (animal, how it moves)
    ("cat", "walk"), ("dog", "walk"), ("bunny", "hop"), ("bird", "fly"), ("fox", "walk"), ("bear", "walk"),
    ("mouse", "walk"), ("duck", "fly"), ("frog", "hop"), ("owl", "fly"), ("pig", "walk"), ("fish", "swim"),
    ("lion", "walk"), ("horse", "walk"), ("squirrel", "hop"), ("puppy", "walk"), ("kitten", "walk"),
    ("bee", "fly"), ("turtle", "walk"), ("goat", "walk"), ("kangaroo", "hop"), ("seal", "swim"),
    ("parrot", "fly"), ("otter", "swim"), ("wolf", "walk"), ("elephant", "walk"), ("whale", "swim"),
    ("tiger", "walk"), ("butterfly", "fly"), ("cricket", "hop"),
]
ANIMALS = zipf([a for a, _ in _ANIMALS], s=ZIPF_S, offset=1.5)
MOVES = dict(_ANIMALS)

CHAR_ADJ = zipf("""little happy big small kind brave shy funny young clever silly old friendly curious gentle
    quiet busy lazy tiny proud playful sleepy bright fluffy lucky grumpy cheerful careful wise noisy polite
    hungry tall strong fast slow sweet jolly lonely smart""".split(), s=ZIPF_S, offset=2.0)
OPENING = table([("Once upon a time, there was", 0.2), ("One day, there was", 0.15), ("There was", 0.5),
                 ("Long ago, there lived", 0.15)])
HOME = zipf(["house", "nest", "hole", "tree", "burrow", "hut", "cottage", "barn", "den", "cave"], s=ZIPF_S)
LAND = zipf("""park forest garden farm hill meadow beach town school market field village playground library
    bakery zoo castle bridge valley mountain orchard shop yard river lake city station museum harbor island
    jungle desert barn tower road fair circus camp kitchen attic cellar palace farmhouse church mill canyon
    swamp""".split(), s=ZIPF_S, offset=2.0)
WATER = zipf(["pond", "lake", "river", "sea", "creek", "bay", "stream"], s=ZIPF_S, offset=1.0)
MOVE_VERB = {
    "walk": table([("went", 0.4), ("walked", 0.25), ("ran", 0.2), ("hurried", 0.1), ("raced", 0.05)]),
    "hop": table([("went", 0.3), ("hopped", 0.45), ("jumped", 0.15), ("ran", 0.1)]),
    "fly": table([("went", 0.3), ("flew", 0.5), ("fluttered", 0.2)]),
    "swim": table([("went", 0.3), ("swam", 0.5), ("paddled", 0.2)]),
}
THINGS = zipf("""ball kite box hat book stick shell rock flower leaf key cup toy drum bell map coin feather sock
    boat car doll star ring bag spoon basket blanket candle robot scarf glove shoe boot button bucket brush bottle
    bowl clock crayon crown kettle ladder lamp letter marble mirror mask necklace note pencil pillow plate puzzle
    rope ruler shovel sled stone string sticker teapot ticket train truck trumpet umbrella wagon wand watch whistle
    jar net pan pot tent fan flag globe helmet jacket kazoo lantern magnet paintbrush rocket sail teddy tray vase
    violin wheel badge balloon bracelet comb compass cushion""".split(), s=ZIPF_S, offset=2.0)
SIZE = table([("", 0.2), ("big ", 0.12), ("small ", 0.1), ("little ", 0.08), ("shiny ", 0.06), ("old ", 0.06),
              ("new ", 0.05), ("soft ", 0.04), ("round ", 0.04), ("tiny ", 0.03), ("broken ", 0.02),
              ("dirty ", 0.02), ("heavy ", 0.02), ("long ", 0.02), ("strange ", 0.02), ("magic ", 0.02)])
THING_ADJ = zipf("""red blue green yellow pink purple white golden black orange brown striped spotted wooden
    silver gray paper glass plastic woolly velvet copper rainbow crystal""".split(), s=ZIPF_S, offset=2.0)
FIND_VERB = table([("found", 0.5), ("saw", 0.3), ("made", 0.1), ("lost", 0.1)])
FEELING = zipf("""happy sad glad tired proud scared excited hungry sleepy calm surprised angry curious cold
    shy silly lonely brave thirsty worried bored cheerful grumpy nervous jolly warm confused sorry upset
    thankful""".split(), s=ZIPF_S, offset=2.0)
FEEL_VERB = table([("was", 0.55), ("felt", 0.45)])
INTENSITY = table([("", 0.45), ("very ", 0.2), ("so ", 0.15), ("a little ", 0.1), ("really ", 0.1)])
ADVERB = table([("", 0.4), (" quickly", 0.15), (" slowly", 0.12), (" happily", 0.1), (" quietly", 0.08),
                (" carefully", 0.06), (" proudly", 0.05), (" bravely", 0.04)])
PLACE_ADJ = zipf(["", "big ", "old ", "little ", "quiet ", "sunny ", "dark ", "busy ", "new ", "green ", "pretty ",
                  "noisy ", "huge ", "small ", "far ", "windy ", "shady ", "cold ", "warm ", "secret ", "muddy ",
                  "empty ", "lovely ", "tall "], s=ZIPF_S, offset=2.0)
PREP = table([("in", 0.3), ("under", 0.2), ("near", 0.2), ("behind", 0.15), ("on", 0.15)])
SPOT = zipf("""grass tree rock bed table door bush sand box bench wall snow mud chair hill fence bridge
    window stairs sofa log shelf mat rug leaves""".split(), s=ZIPF_S, offset=2.0)
GAME = zipf(["tag", "ball", "catch", "hide and seek", "a game", "cards", "music", "blocks", "chess", "pretend"],
            s=ZIPF_S, offset=1.0)
SAY_VERB = table([("said", 0.6), ("shouted", 0.25), ("asked", 0.15)])
SHOUT = zipf(["Wow", "Yay", "Oh no", "Hello", "Look", "Hooray", "Oops", "Yes", "Come here", "Help",
              "Thank you", "Let us play", "Good morning", "Watch me", "I did it", "Stop", "Run", "Wait for me",
              "I am hungry", "This is fun"], s=ZIPF_S, offset=1.0)
QUESTION = zipf(["Where are you", "Can I play", "What is that", "Are you okay", "Do you want to play",
                 "Is it time to eat", "Who is there"], s=ZIPF_S, offset=1.0)
SCENE = zipf(["The sun was warm.", "It began to rain.", "The wind was cold.", "The sky was blue.",
              "It was a sunny day.", "The stars came out.", "It started to snow.", "The moon was bright.",
              "A storm was coming.", "The air smelled sweet."], s=ZIPF_S, offset=1.0)
COUNTABLE = zipf("""apple cookie berry nut carrot seed cake egg plum grape acorn candy pear muffin bean
    cherry lemon peach pie banana""".split(), s=ZIPF_S, offset=1.0)
PLURAL = {w: (w[:-1] + "ies" if w.endswith("y") and w[-2] not in "aeiou" else w + "s") for w in COUNTABLE.words}
ADD_VERB = table([("found", 0.5), ("picked", 0.3), ("got", 0.2)])
SUB_VERB = table([("ate", 0.5), ("lost", 0.2), ("dropped", 0.3)])
OP = table([("add", 0.6), ("sub", 0.4)])
GIVE_OP = table([("give", 0.5), ("share", 0.5)])
START_COUNT = uniform([str(n) for n in range(2, 10)])
ADD_COUNT = uniform([str(n) for n in range(1, 10)])
CONNECTIVE = table([("", 0.35), ("Then ", 0.2), ("Soon ", 0.1), ("Later, ", 0.08), ("After that, ", 0.07),
                    ("Next, ", 0.06), ("Suddenly, ", 0.05), ("At last, ", 0.04), ("That night, ", 0.05)])
ENDING = zipf(["was happy", "went home", "fell asleep", "smiled", "was tired", "had a nap", "ate dinner",
               "was very happy", "said goodbye", "laughed", "went to bed", "sang a song", "had a snack",
               "was proud", "hugged everyone", "read a book", "looked at the stars", "made a wish"],
              s=ZIPF_S, offset=1.0)
CONTINUE = table([("more", CONTINUE_P), ("stop", 1 - CONTINUE_P)])
TWO = table([("two", 0.75), ("one", 0.25)])
HAS_HOME = table([("yes", 0.5), ("no", 0.5)])
SAME = table([("same", 0.7), ("other", 0.3)])
FORM_SAME = table([("pronoun", 0.45), ("name", 0.4), ("animal", 0.15)])
FORM_OTHER = table([("name", 0.7), ("animal", 0.3)])
OBJ_FORM = table([("name", 0.6), ("animal", 0.25), ("pronoun", 0.15)])
EVENT_TWO = table([("move", 0.14), ("find", 0.15), ("see", 0.16), ("feel", 0.10), ("say", 0.08), ("count", 0.18),
                   ("play", 0.06), ("give", 0.07), ("help", 0.03), ("scene", 0.03)])
EVENT_ONE = table([("move", 0.17), ("find", 0.18), ("see", 0.20), ("feel", 0.12), ("say", 0.08), ("count", 0.22),
                   ("scene", 0.03)])
LIST_LEN = table([("2", 0.35), ("3", 0.35), ("4", 0.3)])
SEE_VERB = table([("saw", 0.5), ("wanted", 0.2), ("liked", 0.15), ("drew", 0.15)])

_VOWELS = set("aeiouAEIOU")


def article(word: str) -> str:
    return "an" if word[0] in _VOWELS else "a"
