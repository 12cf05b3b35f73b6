#!/usr/bin/env python3
"""Short children's stories from a hand-written grammar: the training corpus of models/storyteller.bin.

    python3 tools/story_grammar.py --seed 1 --n 3            # print three stories
    python3 tools/story_grammar.py --seed 1 --mb 30 --out corpus.txt

A story is an opening (who, where, what they like), one of twelve plots (a lost toy, a found
treasure, learning to do something hard, a new friend, helping someone, a quarrel, a fear, not
listening, a present, a rainy picnic, a wish, an adventure) and an ending with a moral. Every plot
step has several sentence templates; a template picks words with [a|b|c] (an empty choice drops
the words) and fills {A} (the hero), {B} (a friend), {P} (a parent), {O} (an object), {L} (a place)
and verb forms. Pronouns follow each character (he/she, they for two together), verbs are
conjugated into the past tense by rule plus an irregular table, and a/an is fixed after filling.

Output is deterministic for a seed: one random.Random drives every choice. Stories are separated by
a blank line in the corpus file; paragraphs inside a story by a single newline.
"""

import argparse
import random
import re
import sys

# ------------------------------------------------------------------------------------------------
# Words
# ------------------------------------------------------------------------------------------------

GIRL_NAMES = ("Lily Sue Mia Anna Emma Zoe Sara Lucy Amy Ella Ruby Molly Grace Chloe Bella Jill Kim Luna "
              "Nala Hazel Maggie Ivy Fern Willow Clara Poppy Daisy Rosie Polly Sophie Lola Nora Mila "
              "Rita Jane Kate May Tess Olive Penny Wendy Dot").split()
BOY_NAMES = ("Max Tom Ben Tim Sam Jack Leo Timmy Bob Oliver Finn Jake Billy Nick Toby Danny Ollie Charlie "
             "Joe Rex Buddy Milo Bruno Pete Henry Oscar Teddy Jasper Gus Jim Ted Dan Leon Hugo Louie "
             "Arlo Eddie Felix Noah Rudy Spike Otto").split()

# kind: (feature sentences, homes, how it shows joy). {h} is the character's his/her.
KINDS = {
    "dog": (["a wagging tail and floppy ears", "a shiny black nose", "soft brown fur"],
            ["in a little house with a red door", "with {h} family in a small house"], "wagged {h} tail"),
    "puppy": (["big brown eyes and floppy ears", "a little pink tongue", "soft white fur"],
              ["with {h} family in a house by the park", "in a cozy house with a big yard"], "wagged {h} tail"),
    "cat": (["soft fur and long whiskers", "big green eyes", "a long fluffy tail"],
            ["in a warm house on a quiet street", "with an old lady in a small house"], "purred"),
    "kitten": (["tiny paws and soft gray fur", "big blue eyes", "a little pink nose"],
               ["in a basket by the fire", "in a cozy house with a garden"], "purred"),
    "bunny": (["long ears and a fluffy tail", "soft white fur", "a little pink nose"],
              ["in a burrow under a big tree", "in a hole at the edge of the meadow"], "hopped up and down"),
    "bear": (["big paws and thick brown fur", "a round belly", "small round ears"],
             ["in a cave in the forest", "in a big den near the river"], "danced around"),
    "fox": (["a bushy red tail", "pointy ears and a white chest", "bright orange fur"],
            ["in a den in the woods", "in a hole under an old tree"], "jumped with joy"),
    "owl": (["big round eyes", "soft brown feathers", "a little sharp beak"],
            ["in a hole in a tall oak tree", "in a nest high in a tree"], "hooted with joy"),
    "duck": (["yellow feathers and orange feet", "a flat orange beak", "soft white feathers"],
             ["by a pond on a farm", "in a nest by the lake"], "quacked with joy"),
    "mouse": (["tiny pink ears and a long tail", "soft gray fur", "a little twitchy nose"],
              ["in a small hole in the wall", "in a tiny house under the stairs"], "squeaked with joy"),
    "frog": (["green skin and long legs", "big bulgy eyes", "strong back legs"],
             ["on a lily pad in the pond", "by a quiet pond in the woods"], "croaked happily"),
    "lion": (["a big golden mane", "a long tail with a fluffy tip", "big soft paws"],
             ["on a rock in the tall grass", "in the jungle with {h} family"], "roared with joy"),
    "elephant": (["big ears and a long trunk", "thick gray skin", "a little tail"],
                 ["in the jungle near a river", "with {h} big family by the water"], "raised {h} trunk and trumpeted"),
    "squirrel": (["a big bushy tail", "quick little paws", "soft red fur"],
                 ["in a tall tree in the park", "in a nest at the top of an oak tree"], "jumped from branch to branch"),
    "turtle": (["a hard green shell", "a slow and steady walk", "a little wrinkly face"],
               ["by a quiet pond", "near a river with smooth stones"], "smiled a slow, big smile"),
    "pig": (["a curly tail and a pink nose", "pink skin and little ears", "a round pink belly"],
            ["on a big farm", "in a warm barn on a farm"], "rolled in the grass with joy"),
    "horse": (["a long mane and a shiny coat", "strong legs and a long tail", "big kind eyes"],
              ["in a red barn on a farm", "in a big green field"], "ran around the field"),
    "cow": (["black and white spots", "a big pink nose", "a little bell around {h} neck"],
            ["on a farm near a hill", "in a green field by the barn"], "mooed with joy"),
    "lamb": (["soft white wool", "little black feet", "a tiny wiggly tail"],
             ["on a farm with many sheep", "in a field near the hills"], "jumped with joy"),
    "bird": (["bright blue feathers", "a small yellow beak", "little red wings"],
             ["in a nest in a tall tree", "in a little nest in the garden"], "sang a happy song"),
    "bee": (["black and yellow stripes", "tiny wings", "a little fuzzy body"],
            ["in a busy hive in the garden", "in a hive near the flowers"], "buzzed with joy"),
    "monkey": (["a long curly tail", "quick hands and a funny face", "brown fur"],
               ["in a tall tree in the jungle", "high up in the jungle trees"], "swung from tree to tree"),
    "giraffe": (["a very long neck", "brown spots", "long thin legs"],
                ["on a wide, sunny plain", "near the tall trees of the plain"], "smiled from ear to ear"),
    "penguin": (["black and white feathers", "little orange feet", "short wings"],
                ["on the cold ice", "on a snowy beach far away"], "slid on {h} belly with joy"),
    "hedgehog": (["little brown spikes", "a tiny black nose", "small round ears"],
                 ["in a pile of leaves in the garden", "under a bush at the edge of the woods"], "rolled into a happy ball"),
    "deer": (["big brown eyes and long legs", "a white spotted back", "soft ears"],
             ["in the deep green forest", "in a quiet meadow in the woods"], "leaped with joy"),
    "raccoon": (["a striped tail", "a black mask around {h} eyes", "little clever hands"],
                ["in a hollow tree", "in an old log in the woods"], "clapped {h} little hands"),
    "dragon": (["green scales and small wings", "a long tail and kind eyes", "shiny purple scales"],
               ["in a cave on a tall mountain", "in a castle by the sea"], "blew little puffs of smoke"),
    "unicorn": (["a shiny white horn", "a rainbow mane", "sparkly hooves"],
                ["in a magic forest", "in a meadow full of flowers"], "danced in a circle"),
    "girl": (["curly brown hair", "a big smile and rosy cheeks", "long red hair"],
             ["in a small house near the forest", "with {h} family in a little town",
              "in a cozy house by the sea"], "clapped {h} hands"),
    "boy": (["messy brown hair", "a big smile and freckles", "short black hair"],
            ["in a small house on a hill", "with {h} family in a busy town",
             "in a little house next to a big park"], "jumped up and down"),
}
PEOPLE = ("girl", "boy")
# Heroes are people a third of the time, like in most children's books.
KIND_WEIGHTS = {k: (12 if k in PEOPLE else 1) for k in KINDS}
SEX_OF_KIND = {"girl": "f", "boy": "m"}

HERO_ADJ = ("little small happy curious brave shy kind silly friendly clever playful gentle tiny cheerful "
            "young busy sweet funny").split()
FRIEND_ADJ = ("friendly kind wise old big smart gentle helpful funny happy little").split()

# (noun, how to say "at" it)
PLACES = [("park", "in the park"), ("forest", "in the forest"), ("garden", "in the garden"),
          ("farm", "on the farm"), ("beach", "at the beach"), ("meadow", "in the meadow"),
          ("pond", "by the pond"), ("river", "by the river"), ("hill", "on the hill"),
          ("playground", "at the playground"), ("lake", "by the lake"), ("woods", "in the woods"),
          ("field", "in the field"), ("backyard", "in the backyard"), ("village", "in the village"),
          ("jungle", "in the jungle"), ("valley", "in the valley"), ("orchard", "in the orchard")]
HIDING_SPOTS = ("under a big leaf|in the tall grass|behind a rock|next to the pond|under a bush|"
                "in a pile of leaves|behind the old tree|under the bench|near the flowers|"
                "in a little hole|on top of a rock|by the fence").split("|")

# object: adjectives that fit it
OBJECTS = {
    "ball": "red blue big bouncy yellow green little shiny", "kite": "red blue yellow big colorful",
    "teddy bear": "soft brown fluffy old little", "shell": "pretty pink shiny white big",
    "stone": "shiny smooth round blue", "key": "old golden tiny shiny silver",
    "coin": "golden shiny old silver", "book": "big old red blue new",
    "hat": "red blue big funny yellow", "boat": "little red toy wooden blue",
    "box": "big small red wooden old", "drum": "little red shiny big",
    "ring": "shiny golden silver pretty", "doll": "pretty old soft little",
    "robot": "toy little shiny silver", "bucket": "red blue yellow little",
    "blanket": "soft warm blue pink fluffy", "scarf": "warm red long soft green",
    "umbrella": "red yellow big blue", "toy car": "red blue fast little shiny",
    "music box": "old pretty little golden", "necklace": "pretty shiny golden blue",
    "feather": "long white blue soft pretty", "bell": "little shiny golden silver",
    "crown": "golden shiny little", "cup": "blue red little pretty",
    "basket": "big little brown pretty", "shoe": "red little new blue",
    "wagon": "red little wooden", "whistle": "shiny silver little",
}
# Toys that can break in a tug of war.
BREAKABLE = ("kite", "toy car", "robot", "doll", "boat", "music box", "crown", "cup", "drum", "wagon")

# Verb phrases in the base form; the first word is conjugated. The first list reads well followed
# by a place ("to read books in the park"); the second names its own place.
ACTIVITIES = [
    "play catch", "read books", "sing songs", "dance", "paint pictures", "chase butterflies",
    "fly {h} kite", "ride {h} bike", "pick flowers", "play hide and seek", "draw with crayons",
    "play with {h} toys", "collect shiny stones", "watch the clouds", "listen to the birds", "jump rope",
    "play tag", "tell stories", "eat sweet berries", "play the drum", "blow bubbles", "hum happy songs",
    "play games with friends", "stack little rocks", "look for bugs", "make mud pies", "build little forts",
    "play ball", "do cartwheels", "watch the ants", "draw pictures",
]
ACTIVITIES_PLACED = [
    "play in the sun", "run in the grass", "climb trees", "jump in puddles", "dig in the sand",
    "build towers with blocks", "swim in the pond", "look at the stars", "bake cookies", "splash in the water",
    "roll down the hill", "help in the kitchen", "make sand castles at the beach", "nap in the sun",
    "explore new places", "skip stones on the lake", "take long walks", "swing on the swings",
    "count the stars at night", "watch the fish in the pond",
]
FOODS = ("apples|cookies|berries|sandwiches|carrots|cheese|bread and honey|a big cake|nuts|grapes|"
         "a warm pie|muffins|bananas").split("|")

IRREGULAR = {
    "run": "ran", "swim": "swam", "dig": "dug", "sing": "sang", "build": "built", "ride": "rode",
    "fly": "flew", "read": "read", "see": "saw", "find": "found", "make": "made", "take": "took",
    "give": "gave", "go": "went", "eat": "ate", "get": "got", "sit": "sat", "fall": "fell",
    "think": "thought", "bring": "brought", "come": "came", "tell": "told", "say": "said",
    "feel": "felt", "hold": "held", "keep": "kept", "win": "won", "throw": "threw", "draw": "drew",
    "catch": "caught", "hear": "heard", "know": "knew", "lose": "lost", "leave": "left", "meet": "met",
    "put": "put", "sleep": "slept", "swing": "swung", "hide": "hid", "break": "broke", "wake": "woke",
    "write": "wrote", "grow": "grew", "blow": "blew", "stand": "stood", "teach": "taught", "spin": "spun",
    "have": "had", "do": "did", "begin": "began", "drink": "drank", "shake": "shook", "blink": "blinked",
}
DOUBLE_FINAL = {"stop", "hop", "drop", "skip", "clap", "hug", "pat", "plan", "trip", "nap", "grab", "tap",
                "jog", "rub", "wag", "hum", "beg", "chat", "shop", "step", "flap", "run", "swim", "dig",
                "sit", "get", "put", "win", "begin", "spin", "swing", "stack"} - {"swing", "stack"}


def past(verb: str) -> str:
    if verb in IRREGULAR:
        return IRREGULAR[verb]
    if verb in DOUBLE_FINAL:
        return verb + verb[-1] + "ed"
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    return verb + "ed"


def ing(verb: str) -> str:
    if verb in DOUBLE_FINAL:
        return verb + verb[-1] + "ing"
    if verb.endswith("ie"):
        return verb[:-2] + "ying"
    if verb.endswith("e") and verb not in ("see", "be", "flee"):
        return verb[:-1] + "ing"
    return verb + "ing"


def conj(phrase: str, form) -> str:
    head, _, rest = phrase.partition(" ")
    return form(head) + (" " + rest if rest else "")


# ------------------------------------------------------------------------------------------------
# Characters and template filling
# ------------------------------------------------------------------------------------------------

class Char:
    """A character as templates see it: {A} is the name, {A.he}, {A.His}, {A.self}, ..."""
    PRONOUNS = {"m": ("he", "him", "his", "himself"), "f": ("she", "her", "her", "herself"),
                "pl": ("they", "them", "their", "themselves")}

    def __init__(self, name: str, sex: str, kind: str = "", adj: str = "", ref: str = ""):
        self.name, self.sex, self.kind, self.adj = name, sex, kind, adj
        self.he, self.him, self.his, self.self = self.PRONOUNS[sex]
        self.He, self.His = self.he.capitalize(), self.his.capitalize()
        self.was = "were" if sex == "pl" else "was"
        self.ref = ref or name          # how the narration names them: "Max", "his mom"
        self.Ref = self.ref[0].upper() + self.ref[1:]

    def __format__(self, spec):
        return self.ref


class Obj:
    def __init__(self, noun: str, adj: str):
        self.noun, self.adj, self.full = noun, adj, f"{adj} {noun}"

    def __format__(self, spec):
        return self.noun


class Place:
    def __init__(self, noun: str, at: str):
        self.noun, self.at = noun, at

    def __format__(self, spec):
        return self.noun


_CHOICE = re.compile(r"\[([^\[\]]*)\]")
_A_AN = re.compile(r"\b([Aa]) (?=([a-zA-Z]+))")
_NOT_AN = ("uni", "use", "usu", "one", "once", "eu")


def _fix_article(m: re.Match) -> str:
    word = m.group(2).lower()
    vowel = word[0] in "aeiou" and not word.startswith(_NOT_AN)
    return m.group(1) + ("n " if vowel or word in ("hour", "honest") else " ")


def tidy(text: str) -> str:
    text = re.sub(r" {2,}", " ", text)
    text = re.sub(r" ([,.!?])", r"\1", text)
    text = _A_AN.sub(_fix_article, text)
    # A sentence starts with a capital even when a field opened it.
    text = re.sub(r"(^|[.!?] |^\")([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)
    return text


class Story:
    def __init__(self, rng: random.Random, ctx: dict):
        self.rng, self.ctx, self.paragraphs, self.used = rng, ctx, [[]], []

    def pick(self, seq):
        return seq[self.rng.randrange(len(seq))]

    def fill(self, template: str) -> str:
        text = _CHOICE.sub(lambda m: self.pick(m.group(1).split("|")), template)
        return text.format(**self.ctx)

    def say(self, *templates: str) -> None:
        """Adds one sentence chosen among the templates."""
        t = self.pick(templates)
        self.used.append(t)
        self.paragraphs[-1].append(self.fill(t))

    def maybe(self, p: float, *templates: str) -> None:
        if self.rng.random() < p:
            self.say(*templates)

    def par(self) -> None:
        if self.paragraphs[-1]:
            self.paragraphs.append([])

    def text(self) -> str:
        return "\n".join(tidy(" ".join(p)) for p in self.paragraphs if p)


# ------------------------------------------------------------------------------------------------
# Story parts
# ------------------------------------------------------------------------------------------------

DAYS = ("One day|One sunny day|One morning|One sunny morning|One afternoon|One bright morning|"
        "One warm summer day|One windy afternoon|One fine day|The next day|One spring morning|"
        "One cool autumn day|Early one morning").split("|")


def opening(s: Story) -> None:
    s.say("Once upon a time, there was a {A.adj} {A.kind} named {A}.",
          "Once upon a time, there was a {A.adj} {A.kind} called {A}.",
          "Once upon a time, {home_a}, there lived a {A.adj} {A.kind} named {A}.",
          "There once was a {A.adj} {A.kind} named {A} who lived {home}.",
          "Once upon a time, there was a {A.kind}. {A.His} name was {A}.",
          "Once there was a {A.adj} {A.kind} named {A}.",
          "Long ago, there lived a {A.adj} {A.kind} named {A}.",
          "Once upon a time, in a [faraway|little|quiet|sunny] land, there was a {A.adj} {A.kind} named {A}.",
          "{A} was a {A.adj} {A.kind} who lived {home}.")
    s.maybe(0.4, "{A.He} had {feature}.", "{A} had {feature}.", "{A.He} had {feature} and a kind heart.")
    if not any("{home" in t for t in s.used):
        s.maybe(0.3, "{A.He} lived {home}.", "{A} lived {home_a} with {A.his} {P.kind}.")
    s.say("{A} liked to {act}.", "{A} loved to {act}.", "{A} loved to {act} and {act2}.",
          "Every day, {A} liked to {act} {L.at}.", "{A.His} favorite thing to do was to {act}.",
          "More than anything, {A} loved {act_ing}.", "{A} liked {act_ing} and {act2_ing} every day.",
          "Every morning, {A} went to the {L} to {act}.",
          "{A} spent [many|most|all] of {A.his} days {act_ing} {L.at}.")


ENDINGS = {
    "friends": ["{A} learned that good friends always help each other.",
                "From that day on, {A} and {B} were the best of friends.",
                "{A} knew that with a friend by {A.his} side, nothing was too hard.",
                "And {A} and {B} stayed good friends forever."],
    "honest": ["{A} learned that being honest always makes everyone happy.",
               "{A} knew {A.he} had done the right thing, and that made {A.him} feel warm inside.",
               "It is always good to give back what is not yours."],
    "share": ["{A} learned that sharing makes playing more fun.",
              "They learned that it is better to share than to fight.",
              "From then on, {A} and {B} always shared their toys.",
              "Sharing made them both happy, and that was the best thing of all."],
    "tryagain": ["{A} learned that if you keep trying, you can do hard things.",
                 "{A} learned to never give up, even when something is hard.",
                 "From that day on, whenever something was hard, {A} remembered to try again.",
                 "{A} knew that practice and patience can help you do anything."],
    "kind": ["{A} learned that a kind word can make a new friend.",
             "From that day on, {A} was never lonely again.",
             "{A} learned that saying hello is the first step to making a friend.",
             "And {A} and {B} played together every day after that."],
    "help": ["{A} learned that helping others makes your heart happy.",
             "It feels good to help a friend in need.",
             "{A} learned that even a small {A.kind} can be a big help.",
             "From that day on, {A} always looked for ways to help others."],
    "brave": ["{A} learned that being brave means trying even when you are scared.",
              "From that day on, {A} was not afraid anymore.",
              "{A} learned that many scary things are not so scary after all.",
              "{A} felt brave and proud."],
    "listen": ["{A} learned that it is important to listen to {A.his} {P.kind}.",
               "From that day on, {A} always listened to {A.his} {P.kind}.",
               "{A} knew that {P.ref} only wanted to keep {A.him} safe.",
               "{A} never went there alone again."],
    "give": ["{A} learned that giving can be even more fun than getting.",
             "{A} learned that the best presents come from the heart.",
             "Making someone else happy made {A} happy too.",
             "It was the best day ever."],
    "together": ["Even a rainy day is fun when you are with the people you love.",
                 "{A} learned that a little rain cannot stop a happy day.",
                 "It was a day {A} would never forget.",
                 "They walked home together, happy and tired."],
    "wonder": ["{A} learned that the world is full of wonderful things to see.",
               "It was the best adventure ever.",
               "{A} could not wait for the next adventure.",
               "That night, {A} dreamed about {A.his} big adventure."],
}
CLOSERS = ("The end.", "And they lived happily ever after.", "And that was the end of the day.")


def ending(s: Story, moral: str) -> None:
    s.par()
    s.say(*ENDINGS[moral])
    if s.rng.random() < 0.5:  # a second, different line
        s.say(*[e for e in ENDINGS[moral] if s.fill(e) not in s.paragraphs[-1]])
    s.maybe(0.15, *CLOSERS)


def meet_friend(s: Story) -> None:
    s.say("Just then, {A.his} friend {B}, a {B.adj} {B.kind}, [came by|walked by|saw {A.him}].",
          "Then {A} saw {A.his} friend {B} the {B.kind} [sitting under a tree|playing nearby|walking by].",
          "A {B.adj} {B.kind} named {B} heard {A} and came over.",
          "Soon, {B}, a {B.adj} {B.kind}, came [running|walking|hopping] along.")


def plot_lost(s: Story) -> None:
    s.par()
    s.say("{day}, {A} took {A.his} {O.full} to the {L}.",
          "{day}, {A} was playing with {A.his} {O.full} {L.at}.",
          "{A} had a {O.full} that {A.he} loved very much. {day}, {A.he} took it to the {L}.",
          "{day}, {A} went to the {L} to {act}. {A.He} brought {A.his} {O.full} with {A.him}.")
    s.say("{A.He} [played|had fun] all day. When it was time to go home, {A.he} looked for {A.his} {O}, but it was gone!",
          "Suddenly, {A} looked around. {A.His} {O} was gone!",
          "But when {A.he} looked around, {A.he} could not find {A.his} {O} anywhere.",
          "After a while, {A} saw that {A.his} {O} was not there anymore.")
    s.say("{A} felt very sad.", "{A} was so sad that {A.he} started to cry.",
          "{A} was [very worried|very sad|so upset]. {A.He} had tears in {A.his} eyes.",
          "\"Oh no! Where is my {O}?\" {A} cried.")
    s.par()
    meet_friend(s)
    s.say("\"Why are you sad, {A}?\" {B} asked.", "\"What is wrong, {A}?\" asked {B}.",
          "\"Why are you crying?\" asked {B}.")
    s.say("\"I lost my {O},\" {A} said. \"I can't find it anywhere.\"",
          "\"My {O} is gone,\" {A} said [sadly|with a sniff|in a small voice].",
          "\"I can't find my {O.full},\" said {A}.")
    s.say("\"Don't worry,\" said {B}. \"I will help you find it.\"",
          "\"I can help you look for it!\" said {B}.",
          "\"Let's look for it together,\" said {B} with a smile.")
    s.say("{A} and {B} looked [everywhere|all around]. They looked {L2.at} and {L3.at}.",
          "First, they looked {L2.at}, but the {O} was not there. Then they looked {L3.at}.",
          "They looked [under the bushes|behind the trees|under the rocks] and [behind the flowers|by the fence|in the grass].",
          "They searched and searched, but they could not find it at first.")
    s.say("At last, {B} saw something {O.adj} {spot}. \"Look! There it is!\" {B} shouted.",
          "Finally, they found the {O} {spot}. It was [a little dirty|safe and sound|just fine].",
          "Then {A} saw it! The {O.full} was {spot}.",
          "After a long time, {B} found the {O} {spot}.")
    s.par()
    s.say("{A} was so happy. {A.He} gave {B} a big hug.", "{A} {joy}. {A.He} was so happy!",
          "{A} picked up {A.his} {O} and smiled.")
    s.say("\"Thank you, {B}! You are a good friend,\" said {A}.", "\"Thank you for helping me,\" {A} said.",
          "\"You are the best friend ever,\" said {A}.")
    s.maybe(0.5, "From that day on, {A} always took good care of {A.his} {O}.",
            "Then they played together until the sun went down.",
            "They walked home together, holding hands.")
    ending(s, "friends")


def plot_found(s: Story) -> None:
    s.par()
    s.say("{day}, while {A} was {act_ing} {L.at}, {A.he} [found|saw|noticed] a {O.full} {spot}.",
          "{day}, {A} went to the {L}. There, {spot}, {A.he} found a {O.full}.",
          "{day}, {A} was walking {L.at} when {A.he} saw something {O.adj} {spot}. It was a {O}!")
    s.say("{A} had never seen such a [pretty|nice|special|lovely] {O} before.",
          "It was the [nicest|prettiest|most special] {O} {A} had ever seen.",
          "{A} picked it up and looked at it. It was [so pretty|very special|just perfect].")
    s.say("{A.He} [ran|hurried] to show it to {A.his} friend {B}, a {B.adj} {B.kind}.",
          "{A} took the {O} to show {A.his} friend {B}.")
    s.say("\"Look what I found!\" said {A}.", "\"Look, {B}! I found a {O}!\" {A} said.")
    s.say("\"Wow! It is so [pretty|nice|shiny]!\" said {B}.", "\"Can I see it?\" asked {B}.")
    s.par()
    if s.rng.random() < 0.5:
        s.say("Just then, a {C.adj} {C.kind} named {C} came by. {C.He} looked [sad|worried|upset].",
              "Then they heard someone crying. It was {C}, a {C.adj} {C.kind}.")
        s.say("\"I lost my {O.full},\" said {C}. \"Have you seen it?\"",
              "\"Have you seen my {O}?\" asked {C}. \"I lost it {L.at}.\"")
        s.say("{A} looked at the {O}. {A.He} wanted to keep it, but {A.he} knew it was not {A.his}.",
              "{A} thought for a moment. Then {A.he} knew what to do.",
              "{A} wanted to keep the {O}, but {A.he} knew the right thing to do.")
        s.say("{A} gave the {O} back to {C}.", "\"Here it is,\" said {A}, and {A.he} gave the {O} to {C}.")
        s.say("\"Thank you!\" said {C}. \"You are very kind.\"",
              "{C} was so happy. \"Thank you, thank you!\" {C.he} said.")
        ending(s, "honest")
    else:
        s.say("{A} wanted to keep the {O} all for {A.self}. But then {A.he} saw how much {B} liked it.",
              "{A} thought for a moment. Then {A.he} smiled.")
        s.say("\"We can play with it together,\" said {A}.", "\"Let's share it,\" said {A}.")
        s.say("{A} and {B} played with the {O} all day. They [laughed and had fun|took turns|had the best time].",
              "They took turns with the {O} and laughed all afternoon.")
        ending(s, "share")


GOALS = [  # (goal, a failed try, success)
    ("climb the big tree", "{A.he} slipped and fell down", "{A.he} climbed all the way to the top"),
    ("fly a kite", "the kite fell to the ground", "the kite flew high up in the sky"),
    ("swim across the pond", "{A.he} got tired and had to go back", "{A.he} swam all the way across"),
    ("ride a bike", "{A.he} wobbled and fell off", "{A.he} rode all the way down the road"),
    ("jump over the big log", "{A.his} feet hit the log", "{A.he} jumped right over it"),
    ("build a tall tower of blocks", "the tower fell down", "the tower stood tall and did not fall"),
    ("catch a fish", "the fish swam away", "{A.he} caught a big, shiny fish"),
    ("whistle a song", "only air came out", "a happy little tune came out"),
    ("bake a cake", "the cake came out flat", "the cake came out big and soft"),
    ("skip stones on the lake", "the stone sank right away", "the stone skipped five times"),
    ("reach the red apple on the tree", "{A.he} could not reach it", "{A.he} got the apple at last"),
    ("jump rope", "{A.he} tripped over the rope", "{A.he} jumped ten times in a row"),
    ("read a whole book", "the words were too hard", "{A.he} read the very last page"),
    ("do a cartwheel", "{A.he} fell on the grass", "{A.he} did a perfect cartwheel"),
]


def plot_try(s: Story) -> None:
    goal, fail, win = s.pick(GOALS)
    s.ctx.update(goal=s.fill(goal), fail=s.fill(fail), win=s.fill(win))
    s.par()
    s.say("{day}, {A} saw {B} {goal}. {A} wanted to {goal} too.",
          "{A} wanted to {goal} more than anything.",
          "{day}, {A} decided to {goal}.",
          "There was one thing {A} could not do. {A.He} could not {goal}.")
    s.say("{A} tried, but {fail}.", "{A.He} tried very hard, but {fail}.", "On the first try, {fail}.")
    s.say("\"I can't do it,\" {A} said sadly.", "{A} felt [sad|upset|like giving up].",
          "\"This is too hard,\" said {A}.")
    s.par()
    s.say("\"Don't give up,\" said {P}. \"Try again, and you will do it.\"",
          "{P.Ref} gave {A.him} a hug. \"Everyone needs practice,\" {P.he} said. \"Try one more time.\"",
          "\"You can do it, {A}!\" said {A.his} friend {B}. \"Just keep trying.\"",
          "{B} the {B.kind} came over and said, \"When I was little, I could not do it either. Keep trying!\"")
    s.say("So {A} tried again. But {fail} again.", "{A} tried again and again.",
          "{A} practiced every day.", "The next day, {A} tried again.")
    s.maybe(0.5, "{A} did not give up.", "But {A} did not stop trying.", "{A} took a deep breath.")
    s.say("At last, {win}!", "Then, on the next try, {win}!", "Finally, {win}!")
    s.say("\"I did it! I did it!\" {A} shouted.", "{A} {joy}.", "\"Look at me!\" {A} cried with joy.")
    s.say("{P.Ref} was very proud of {A.him}.", "Everyone clapped and cheered for {A.him}.",
          "{A} felt proud of {A.self}.")
    ending(s, "tryagain")


def plot_newfriend(s: Story) -> None:
    s.par()
    s.say("But {A} had no friends to play with.", "{A} was new in town and did not know anyone.",
          "{A} was very shy, and {A.he} did not have any friends.")
    s.say("{A.He} felt [lonely|sad|a little lonely].", "Every day, {A} played all by {A.self}.")
    s.say("{day}, {A} saw a {B.adj} {B.kind} {L.at}. {B.He} was {act_ing} all alone.",
          "{day}, {A} went to the {L}. There {A.he} saw a {B.kind} {act_ing} by {B.self}.")
    s.say("{A} wanted to say hello, but {A.he} was [a little scared|too shy|nervous].",
          "{A} took a deep breath and walked over.")
    s.par()
    s.say("\"Hello,\" said {A}. \"My name is {A}. What is your name?\"",
          "\"Hi! I am {A},\" said {A} in a small voice. \"Who are you?\"")
    s.say("\"I am {B},\" said the {B.kind} with a smile.", "\"My name is {B},\" said the {B.kind}.")
    s.say("\"Do you want to play with me?\" asked {A}.", "\"Can I play with you?\" asked {A}.")
    s.say("\"Yes!\" said {B}. \"I was lonely too.\"", "\"I would love that!\" said {B}.")
    s.say("They {act_ed} and {act2_ed} [all day|until the sun went down|all afternoon].",
          "{A} and {B} {act_ed} together. They laughed and laughed.",
          "The two new friends {act_ed} all afternoon.")
    s.say("{A} was not lonely anymore.", "{A} had never been so happy.", "{A} {joy}.")
    ending(s, "kind")


TROUBLES = [  # (what is wrong, how B says it, how A helps)
    ("{B} was stuck in the mud and could not get out", "I am stuck in the mud",
     "{A} pulled and pulled, and at last {B} was free"),
    ("{B} had hurt {B.his} leg and could not walk", "I hurt my leg",
     "{A} helped {B} get home, and {B.his} mom put a bandage on it"),
    ("{B} was lost and could not find {B.his} way home", "I am lost",
     "{A} knew the way. {A.He} walked with {B} all the way back to {B.his} home"),
    ("{B} was very hungry because {B.he} had not eaten all day", "I am so hungry",
     "{A} shared {A.his} {food} with {B}"),
    ("{B} was cold and shivering", "I am so cold", "{A} gave {B} {A.his} warm scarf"),
    ("{B.His} kite was stuck high in a tree", "My kite is stuck in the tree",
     "{A} climbed up the tree and got the kite down"),
    ("{B} could not reach the apples on the tree", "I can't reach the apples",
     "{A} shook the tree, and the apples fell down into the grass"),
    ("{B.His} little boat was floating away on the river", "My boat is floating away",
     "{A} ran along the river and caught the boat with a long stick"),
    ("{B} had dropped all {B.his} berries on the ground", "I dropped all my berries",
     "{A} helped {B} pick up every berry and put them back in the basket"),
    ("{B} was caught in a big thorny bush", "I am caught in the bush",
     "{A} carefully moved the branches, and {B} got out"),
]


def plot_help(s: Story) -> None:
    trouble, cry, fix = s.pick(TROUBLES)
    s.ctx.update(trouble=s.fill(trouble), cry=s.fill(cry), fix=s.fill(fix))
    s.par()
    s.say("{day}, {A} was {act_ing} {L.at} when {A.he} heard someone [crying|calling for help].",
          "{day}, {A} was walking to the {L}. On the way, {A.he} heard a [sad|little] voice.",
          "{day}, as {A} was {act_ing}, {A.he} heard a small cry.")
    s.say("It was {B}, a {B.adj} {B.kind}.", "{A} looked around and saw a {B.adj} {B.kind} named {B}.")
    s.say("{trouble}.", "Poor {B}! {trouble}.")
    s.say("\"Help! {cry}!\" cried {B}.", "\"Please help me,\" said {B}. \"{cry}.\"",
          "\"What's wrong?\" asked {A}. \"{cry},\" said {B}.")
    s.par()
    s.say("\"Don't worry, I will help you,\" said {A}.", "{A} knew {A.he} had to help.",
          "\"I can help!\" said {A}.")
    s.say("{fix}.", "{A} thought hard. Then {A.he} had an idea. {fix}.")
    s.say("\"Thank you, {A}!\" said {B}. \"You are a true friend.\"",
          "{B} was so happy. \"Thank you for helping me,\" {B.he} said.",
          "\"You saved the day!\" said {B}.")
    s.say("{A} felt [happy|warm inside|proud] because {A.he} had helped.",
          "{A} smiled. Helping {B} made {A.him} feel good.")
    s.maybe(0.5, "After that, {A} and {B} became good friends.", "Then they {act_ed} together.")
    ending(s, "help")


def plot_quarrel(s: Story) -> None:
    noun = s.pick(BREAKABLE)
    s.ctx["O"] = Obj(noun, s.pick(OBJECTS[noun].split()))
    s.par()
    s.say("{A} and {B} were [best friends|good friends|friends]. They liked to {act} together.",
          "{A} had a friend named {B}, a {B.adj} {B.kind}. They played together every day.")
    s.say("{day}, they found a {O.full} {L.at}.", "{day}, {P} gave them a new {O}.",
          "{day}, {B} brought a {O.full} to play with.")
    s.say("Both of them wanted to play with it.", "{A} wanted it, and {B} wanted it too.")
    s.say("\"It's mine!\" said {A}. \"No, it's mine!\" said {B}.",
          "\"I want it first!\" said {A}. \"No, me!\" said {B}.")
    s.say("They pulled and pulled. Then, snap! The {O} broke.",
          "They pulled so hard that the {O} broke into two pieces.",
          "They each pulled on the {O}, and then it broke!")
    s.say("Now nobody could play with it. {A} and {B} both started to cry.",
          "{A} and {B} looked at the broken {O}. They felt very sad.")
    s.par()
    s.say("{P.Ref} came over and saw what had happened.", "{P.Ref} heard the crying and came outside.")
    s.say("\"When you fight, nobody gets to play,\" {P.he} said. \"It is better to share.\"",
          "\"If you share, you can both have fun,\" said {P}.",
          "\"You can take turns,\" {P.he} said kindly.")
    s.say("{A} and {B} felt sorry.", "{A} looked at {B}. {B} looked at {A}.")
    s.say("\"I'm sorry,\" said {A}. \"I'm sorry too,\" said {B}.",
          "\"I am sorry I pulled,\" said {A}. \"Me too,\" said {B}.")
    s.say("{P.Ref} fixed the {O}, and they took turns playing with it.",
          "Together, they fixed the {O} with some glue and tape.",
          "{P.Ref} helped them fix the {O}. Then they played with it together.")
    ending(s, "share")


FEARS = [  # (fear, when it comes, the comfort, how it turns out)
    ("the dark", "That night, the lights went out, and {A.his} room was very dark",
     "{P.he} turned on a little night light", "The scary shapes were just {A.his} toys and {A.his} coat"),
    ("thunder", "That night, there was a big storm. Boom! went the thunder",
     "{P.he} held {A.him} close and sang a soft song", "Soon the storm passed, and the night was quiet again"),
    ("the big slide", "{day}, {A} went to the playground. The big slide was so tall",
     "{P.he} held {A.his} hand at the top", "{A} slid down fast. Whee! It was so much fun"),
    ("the water", "{day}, {A} went to the lake with {P}. The water looked so deep",
     "{P.he} stayed right next to {A.him}", "{A} splashed and kicked and laughed. The water was fun"),
    ("the big dog next door", "{day}, the big dog next door ran up to {A}",
     "{P.he} showed {A.him} how to hold out {A.his} hand", "The big dog just wanted to play. It licked {A.his} hand"),
    ("the noise in the attic", "That night, {A} heard a noise in the attic. Bump, bump, bump",
     "{P.he} took a flashlight and went up with {A.him}", "It was only a little mouse looking for a warm place"),
    ("bees", "{day}, a bee flew near {A} in the garden",
     "{P.he} told {A.him} to stay calm and still", "The bee just flew to a flower and did not hurt {A.him} at all"),
]


def plot_fear(s: Story) -> None:
    fear, when, comfort, outcome = s.pick(FEARS)
    s.ctx.update(fear=fear, when=s.fill(when), comfort=s.fill(comfort), outcome=s.fill(outcome))
    s.par()
    s.say("But {A} was afraid of {fear}.", "There was one thing {A} did not like. {A.He} was scared of {fear}.",
          "{A} was brave about many things, but {A.he} was afraid of {fear}.")
    s.say("{when}.")
    s.say("{A} [shook|trembled|hid under {A.his} blanket]. \"I'm scared,\" {A.he} said.",
          "\"{P.call}! I'm scared!\" cried {A}.", "{A} felt very scared.")
    s.par()
    s.say("{P.Ref} came and sat with {A.him}. {comfort}.", "{P.Ref} heard {A.him}. {comfort}.")
    s.say("\"There is nothing to be afraid of,\" said {P}.", "\"Let's look together,\" said {P}.",
          "\"I am right here with you,\" {P.he} said.")
    s.say("{A} took a deep breath and looked. {outcome}.", "{A} tried to be brave. {outcome}.",
          "{A} was brave. {outcome}.")
    s.say("{A} laughed. {A.He} was not scared anymore.", "{A} smiled and hugged {P}.",
          "\"That was not scary at all!\" said {A}.")
    ending(s, "brave")


DANGERS = [  # (place to avoid, what goes wrong, the rescue)
    ("the river", "{A} slipped on a wet rock and fell into the cold water",
     "{B}, a big {B.kind}, heard {A.him} and pulled {A.him} out"),
    ("the deep woods", "{A} could not find the path back, and {A.he} was lost",
     "{B}, a wise {B.kind}, showed {A.him} the way home"),
    ("the big road", "a loud car came very fast, and {A} had to jump out of the way",
     "{B}, a kind {B.kind}, helped {A.him} get back home safely"),
    ("the old well", "{A} leaned over too far, and {A.his} {O} fell into the well",
     "{B} the {B.kind} helped {A.him} get it out with a long rope"),
    ("the tall cliff", "{A} climbed up high and then could not get down",
     "{B}, a brave {B.kind}, helped {A.him} climb down slowly"),
]


def plot_listen(s: Story) -> None:
    place, trouble, rescue = s.pick(DANGERS)
    s.ctx.update(place=place, trouble=s.fill(trouble), rescue=s.fill(rescue))
    s.par()
    s.say("{P.Ref} always said, \"{A}, please do not go near {place} alone.\"",
          "\"Never go to {place} by yourself,\" {P} told {A}.",
          "{P.Ref} told {A} to stay away from {place}.")
    s.say("But {A} was very curious.", "{A} wondered what was there.",
          "{A} did not understand why.")
    s.say("{day}, {A} went to {place} [anyway|all alone|without telling anyone].",
          "{day}, when nobody was looking, {A} walked to {place}.")
    s.say("Oh no! {trouble}.", "But then, {trouble}.")
    s.say("\"Help! Help!\" cried {A}.", "{A} was very scared. \"{P.call}!\" {A.he} cried.")
    s.par()
    s.say("Luckily, {rescue}.", "Just in time, {rescue}.")
    s.say("{A} ran home to {P} and told {P.him} everything.", "When {A} got home, {A.he} hugged {P}.")
    s.say("\"I'm sorry, {P.call}. I should have listened to you,\" said {A}.",
          "\"I'm sorry,\" said {A}. \"I will listen next time.\"")
    s.say("{P.Ref} gave {A.him} a big hug. \"I am glad you are safe,\" {P.he} said.",
          "\"Rules keep you safe,\" said {P}, and {P.he} hugged {A.him}.")
    ending(s, "listen")


PRESENTS = ["a card with a big red heart", "a picture of {R}", "a bunch of pretty flowers",
            "a plate of warm cookies", "a necklace of little shells", "a crown made of leaves",
            "a little clay bowl", "a song just for {R}", "a paper boat", "a basket of sweet berries"]


def plot_gift(s: Story) -> None:
    recipient = s.pick(["B", "P"])
    s.ctx["R"] = s.ctx[recipient]
    s.ctx["present"] = s.fill(s.pick(PRESENTS))
    s.ctx["occasion"] = s.pick(["birthday", "birthday", "special day"])
    s.par()
    s.say("{day}, {A} remembered that it was {R}'s {occasion} soon.",
          "{A} knew that tomorrow was {R}'s {occasion}.",
          "{day}, {A} wanted to make a surprise for {R}.")
    s.say("{A} wanted to give {R.him} something special, but {A.he} had no money.",
          "{A} thought and thought about what to give {R.him}.")
    s.say("Then {A.he} had an idea! {A.He} would make {present}.",
          "Suddenly, {A} had a great idea. {A.He} would make {present}!")
    s.par()
    s.say("{A} worked hard all morning.", "{A} worked and worked until it was just right.")
    s.maybe(0.6, "{A.He} got [paint|glue|flour|mud] on {A.his} nose, but {A.he} did not mind.",
            "It was hard work, but {A} did not give up.", "{A} hid it so it would be a surprise.")
    s.say("When {R} saw the present, {R.he} [smiled a big smile|was so happy|jumped with joy].",
          "{A} gave {R} the present. {R.Ref} [opened it slowly|looked at it for a long time].")
    s.say("\"Thank you, {A}! This is the best present ever!\" said {R}.",
          "\"You made this for me?\" said {R}. \"I love it!\"")
    s.say("{A} felt warm and happy inside.", "{A} {joy}.")
    ending(s, "give")


def plot_picnic(s: Story) -> None:
    s.ctx["food"] = s.pick(FOODS)
    s.ctx["food2"] = s.pick(FOODS)
    s.par()
    s.say("{day}, {A} and {P} went on a picnic {L.at}.",
          "{day}, {P} said, \"Let's have a picnic {L.at}!\"")
    s.say("They brought {food} and {food2} in a big basket.", "{A} helped pack {food} and {food2}.")
    s.say("They sat on a [soft|big|blue] blanket and ate. The sun was warm, and the birds were singing.",
          "They ate {food} and watched the clouds go by.")
    s.par()
    s.say("Suddenly, dark clouds came, and it started to rain!", "Then, drip, drop, the rain began to fall.")
    s.say("They grabbed the basket and ran to hide under a big tree.",
          "They ran into an old barn to stay dry.",
          "They hid under {A.his} big umbrella.")
    s.say("{A} was sad at first. But then {A.he} started to laugh.",
          "\"Our picnic is ruined,\" said {A}. \"No,\" said {P}, \"now it is a rainy picnic!\"")
    s.say("They ate the rest of the {food2} and listened to the rain.",
          "They sang songs and told stories until the rain stopped.")
    s.say("Soon the rain stopped, and a big rainbow came out.", "Then the sun came back, and a rainbow filled the sky.")
    ending(s, "together")


WISHES = [  # (wish, what happens)
    ("fly like a bird", "{A.he} rose up into the sky and flew over the trees and houses"),
    ("be as big as a tree", "{A.he} grew and grew until {A.he} could see over the whole town"),
    ("talk to the fish", "{A.he} could hear the little fish in the pond say hello"),
    ("visit the moon", "{A.he} floated up, up, up, all the way to the moon"),
    ("have a garden full of candy", "lollipops and gumdrops began to grow all around {A.him}"),
    ("see the bottom of the sea", "{A.he} could breathe under the water and swim with the fish"),
]


def plot_wish(s: Story) -> None:
    wish, magic = s.pick(WISHES)
    s.ctx.update(wish=wish, magic=s.fill(magic))
    s.ctx["O"] = Obj(s.pick(["stone", "shell", "feather", "coin", "bell", "ring", "key"]), "magic")
    s.par()
    s.say("{day}, {A} found a {O.full} {spot}. It [sparkled|glowed|shined] in the sun.",
          "{day}, a {B.adj} {B.kind} named {B} gave {A} a {O.full}. \"Make a wish,\" {B.he} said.")
    s.say("{A} held the {O} and said, \"I wish I could {wish}.\"",
          "\"I wish I could {wish},\" {A} whispered.")
    s.say("Then something amazing happened. {magic}!", "Suddenly, {magic}!")
    s.say("\"Wow!\" said {A}. \"This is amazing!\"", "{A} laughed with joy.")
    s.say("{A} had the best time. {A.He} never wanted it to end.",
          "It was the most wonderful thing {A} had ever done.")
    s.par()
    s.say("But soon the sun began to set, and {A} started to miss {A.his} home.",
          "After a while, {A} felt tired and wanted to go home.")
    s.say("\"I wish I could go home,\" said {A}. And just like that, {A.he} was back home.",
          "{A} made one more wish, and soon {A.he} was home again.")
    s.say("{A} told {P} all about it. {P.Ref} smiled and said, \"What a wonderful dream!\"",
          "{A} hugged {P}. Home was the best place of all.")
    ending(s, "wonder")


DISCOVERIES = ["a field full of yellow flowers", "a family of little ducks", "an old wooden boat",
               "a secret garden with a little gate", "a small waterfall", "a tree full of red apples",
               "a cave that sparkled inside", "a nest with three tiny eggs", "a big rainbow over the lake",
               "a house made of old stones"]
WONDERS = ["what was on top of the hill", "what was across the river", "what was inside the old barn",
           "what was at the end of the path", "where the little stream went", "what was behind the tall fence"]


def plot_adventure(s: Story) -> None:
    s.ctx.update(wonder=s.pick(WONDERS), found=s.pick(DISCOVERIES))
    s.par()
    s.say("{A} always wondered {wonder}.", "{day}, {A} wanted to find out {wonder}.")
    s.say("{A.He} asked {A.his} friend {B}, a {B.adj} {B.kind}, to come along.",
          "{A} asked {P} if {A.he} could go and look. \"Take {B} with you,\" said {P}.",
          "{A.His} friend {B} the {B.kind} wanted to come too.")
    s.say("They [packed a snack|took a map|put on their boots] and set off.",
          "{A} and {B} set off on a big adventure.")
    s.say("They walked and walked. They [crossed a little bridge|went past tall trees|climbed over big rocks].",
          "The path was long, but they kept going.")
    s.par()
    s.say("At last, they found {found}!", "Then they saw it: {found}!")
    s.say("\"Wow!\" said {A}. \"It is so [beautiful|amazing|wonderful]!\"",
          "They [stood very still|looked and looked]. It was [so beautiful|amazing|like a dream].")
    s.say("They stayed there for a long time. Then it was time to go home.",
          "They sat and looked until the sun went down.")
    s.say("When {A} got home, {A.he} told {P} all about it.",
          "That night, {A} told {P} about {found}.")
    ending(s, "wonder")


PLOTS = [plot_lost, plot_found, plot_try, plot_newfriend, plot_help, plot_quarrel, plot_fear,
         plot_listen, plot_gift, plot_picnic, plot_wish, plot_adventure]


def make_char(rng: random.Random, adjs, avoid=()) -> Char:
    kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
    sex = SEX_OF_KIND.get(kind) or rng.choice("mf")
    while True:
        name = rng.choice(BOY_NAMES if sex == "m" else GIRL_NAMES)
        if name not in avoid:
            break
    adj = rng.choice(adjs)
    while kind in PEOPLE and adj in ("old", "wise"):
        adj = rng.choice(adjs)
    return Char(name, sex, kind, adj)


def story(rng: random.Random) -> str:
    A = make_char(rng, HERO_ADJ)
    B = make_char(rng, FRIEND_ADJ, avoid={A.name})
    C = make_char(rng, FRIEND_ADJ, avoid={A.name, B.name})
    parent, psex = rng.choice([("mom", "f"), ("dad", "m"), ("grandma", "f"), ("grandpa", "m"), ("mom", "f")])
    P = Char(parent.capitalize(), psex, parent, ref=f"{A.his} {parent}")
    P.call = parent.capitalize()
    features, homes, joy = KINDS[A.kind]
    places = rng.sample(PLACES, 3)
    acts = [rng.choice(ACTIVITIES), rng.choice(ACTIVITIES + ACTIVITIES_PLACED)]
    while acts[1] == acts[0]:
        acts[1] = rng.choice(ACTIVITIES + ACTIVITIES_PLACED)
    noun = rng.choice(list(OBJECTS))
    home = rng.choice(homes).format(h=A.his)
    ctx = dict(A=A, B=B, C=C, P=P, O=Obj(noun, rng.choice(OBJECTS[noun].split())),
               L=Place(*places[0]), L2=Place(*places[1]), L3=Place(*places[2]),
               home=home, home_a=re.sub(r"with (his|her|an old lady)( big)?( family)? ?", "", home).strip(),
               feature=rng.choice(features).format(h=A.his), joy=joy.format(h=A.his),
               day=rng.choice(DAYS), spot=rng.choice(HIDING_SPOTS), food=rng.choice(FOODS))
    for i, a in enumerate(acts):
        a = a.format(h=A.his)
        sfx = "" if i == 0 else "2"
        ctx["act" + sfx], ctx["act" + sfx + "_ed"], ctx["act" + sfx + "_ing"] = a, conj(a, past), conj(a, ing)
    s = Story(rng, ctx)
    opening(s)
    rng.choice(PLOTS)(s)
    return s.text()


def generate(seed: int, n_bytes: int):
    """Yields stories until about n_bytes of text."""
    rng = random.Random(seed)
    total = 0
    while total < n_bytes:
        text = story(rng)
        total += len(text) + 2
        yield text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=3, help="stories to print (without --out)")
    ap.add_argument("--mb", type=float, default=30.0, help="corpus size in MB (with --out)")
    ap.add_argument("--out", help="write a corpus of --mb MB here, stories separated by a blank line")
    args = ap.parse_args(argv)
    if not args.out:
        rng = random.Random(args.seed)
        print("\n\n".join(story(rng) for _ in range(args.n)))
        return 0
    with open(args.out, "w", encoding="utf-8") as f:
        n = 0
        for text in generate(args.seed, int(args.mb * 1e6)):
            f.write(text + "\n\n")
            n += 1
    print(f"wrote {n} stories to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
