#!/usr/bin/env python3
"""Write the screenshot-intent data set: short spoken requests labelled yes (the companion must look
at the user's screen / camera picture to answer) or no.

    python3 tools/tool-model/dataset.py          # writes tools/tool-model/data/{train,heldout}.jsonl
                                                  # and tools/tool-model/data/eval-cases.jsonl

train/heldout come from one pool of templates and slot words (held-out = a random 15% split);
eval-cases.jsonl (`yap tool-eval`) comes from *separate* templates and slot words that training
never sees. Each line: {"text": ..., "history"?: "User: ...\\nAssistant: ...", "expected": "yes"|"no"}.
"""

import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------- training pool
T_ITEMS = ["outfit", "dress", "shirt", "haircut", "drawing", "painting", "room", "desk setup",
           "code", "website", "logo", "photo", "meme", "tattoo", "shoes", "cake", "slide",
           "chart", "poster", "thumbnail", "makeup", "jacket", "resume", "essay", "layout"]
T_YES = [
    "look at this", "look at this {item}", "can you see my screen", "what's on my screen",
    "take a look at this", "check this out", "check out my {item}", "have a look at my {item}",
    "what do you think of this {item}", "how does this {item} look", "does this {item} look good on me",
    "rate my {item}", "is this {item} ugly", "be honest, is my {item} any good", "what do you think of my {item}",
    "what does this error mean", "can you read this", "what does it say here", "read this for me",
    "translate the text on my screen", "summarize this article I'm reading", "explain this graph",
    "help me with this math problem", "which button should I click", "what's wrong with my code here",
    "is this email a scam", "what kind of bird is this", "who is this person", "what breed is this dog",
    "what plant is this", "where was this photo taken", "what game am I playing", "which of these two is better",
    "should I pick the left one or the right one", "can you see what I'm doing", "do you like what you see",
    "tell me what you see", "what am I looking at", "is this the right form to fill out",
    "describe what's on my screen", "what color is this", "does this match", "help me fix this",
    "what does this word mean right here", "is this {item} too much", "would you change anything about this {item}",
    "can you spot the mistake", "how much is this worth", "is this a good deal", "what's this thing",
]
T_NO = [
    "tell me a joke", "tell me a story about {topic}", "sing me a song", "what's the capital of {country}",
    "how far away is the moon", "who wrote {book}", "how many days are in a leap year",
    "what year did the {event} happen", "I had a rough day", "I'm bored", "how are you",
    "what's your favorite {thing}", "do you like {thing}", "I love you", "good morning", "I can't sleep",
    "how do I cook {dish}", "what should I eat tonight", "give me tips for {activity}",
    "how do I fix a flat tire", "what do you think about {topic}", "I'll see you tomorrow",
    "look, I'm just tired", "let's see, what should we talk about", "I saw a movie yesterday",
    "have you seen {movie}", "I'm looking forward to the weekend", "see you later",
    "describe a sunset for me", "imagine a red car", "this is so fun", "this weekend I'm going {activity}",
    "this song is stuck in my head", "what do you think I should do about my job",
    "can you help me write a poem", "explain how rainbows form", "why is the sky blue",
    "what's the weather usually like in {country}", "recommend a book", "do you dream",
    "what are you up to", "I miss my {person}", "my {person} is driving me crazy",
    "talk to me about {topic}", "quiz me on {topic}", "what's two plus two", "remind me what we talked about",
    "say something nice", "you're funny", "what would you do with a million dollars",
]
T_TOPIC = ["space", "dinosaurs", "pirates", "the ocean", "friendship", "pineapple on pizza", "music", "history",
           "dragons", "cats", "time travel", "football"]
T_COUNTRY = ["France", "Japan", "Brazil", "Canada", "Kenya", "Italy", "Australia", "India"]
T_BOOK = ["Hamlet", "Pride and Prejudice", "The Hobbit", "Moby Dick"]
T_EVENT = ["moon landing", "first world war", "fall of the Berlin Wall"]
T_THING = ["color", "food", "movie", "season", "animal", "song"]
T_DISH = ["pasta", "rice", "pancakes", "a curry", "an omelette"]
T_ACTIVITY = ["hiking", "running", "camping", "studying", "public speaking"]
T_MOVIE = ["Inception", "Titanic", "the new Batman movie"]
T_PERSON = ["mom", "brother", "best friend", "boss", "ex"]
PREFIX = ["", "", "", "hey ", "okay so ", "um ", "yo ", "quick question, ", "babe, ", "so ", "hmm "]
SUFFIX = ["", "", "?", "!", " right now", " real quick", " honestly", " please", "."]

HIST_VISUAL = ["I'm trying on a new jacket", "I'm looking at apartments online", "I've got two paint colors here",
               "I just finished my drawing", "my code keeps crashing", "I'm holding up my new phone case",
               "I'm on the checkout page", "I made a poster for the party"]
HIST_PLAIN = ["I had a fight with my sister", "I'm thinking about learning guitar", "work was so stressful today",
              "I want to travel next summer", "my cat keeps waking me up", "I might change careers"]
AMBIGUOUS = ["what do you think", "which one", "is it any good", "how does it look", "does it look okay",
             "thoughts", "can you tell what's wrong", "be honest"]
NOT_VISUAL_FOLLOWUP = ["anyway, tell me a joke", "never mind, how was your day", "what's the capital of Spain",
                       "let's talk about something else"]

# ---------------------------------------------------------------- eval-only pool (never trained on)
E_ITEMS = ["sweater", "nail polish", "garden", "spreadsheet", "guitar", "bedroom", "sketch", "cover letter",
           "hat", "sneakers", "costume", "wallpaper", "diagram", "recipe card", "car"]
E_YES = [
    "peep this", "glance at my {item} and tell me", "what's this thing on my monitor",
    "you seeing this {item}?", "be real, is this {item} cute", "judge my {item}",
    "give me feedback on what I have open", "what's written on this label",
    "which of the {item}s on screen should I buy", "does my {item} look alright",
    "can you check this {item} for typos", "what's going on in this picture",
    "rate what I'm wearing", "is there anything weird in this screenshot",
    "tell me if this {item} looks professional", "what animal is in this photo",
    "can you proofread what I just wrote here", "any idea what this warning is about",
    "does this color work on the {item}", "spot anything off about my {item}",
]
E_NO = [
    "what's a good name for a goldfish", "teach me a fun fact", "how tall is Mount Everest",
    "who invented the telephone", "I'm feeling kind of lonely tonight", "what's your dream vacation",
    "can we play twenty questions", "how do you make {food}", "I just got back from the gym",
    "what's the meaning of life", "tell me about {subject}", "I watched a documentary about {subject}",
    "let me see, I think I'll go to bed", "my eyes are tired", "picture yourself on a beach",
    "I can see why people like {subject}", "do you have a favorite {category}", "any plans for today",
    "what rhymes with orange", "give me a pep talk",
]
E_FOOD = ["lemonade", "guacamole", "french toast", "hummus"]
E_SUBJECT = ["volcanoes", "the roman empire", "jazz", "penguins", "black holes"]
E_CATEGORY = ["planet", "holiday", "dessert", "number"]
E_HIST_VISUAL = ["I'm picking a font for my flyer", "I'm wearing my grandma's old necklace",
                 "I'm comparing two laptops on this page"]
E_HIST_PLAIN = ["I've been thinking about my grandma a lot", "I want to get better at chess",
                "I'm nervous about my exam"]
E_AMBIGUOUS = ["which do you prefer", "honest opinion", "does it work", "too much?"]


def fill(t, rng, slots):
    out = t
    for key, values in slots.items():
        while "{" + key + "}" in out:
            out = out.replace("{" + key + "}", rng.choice(values), 1)
    return out


def dress(text, rng):
    return (rng.choice(PREFIX) + text + rng.choice(SUFFIX)).strip()


def hist(user_line):
    return f"User: {user_line}\nAssistant: Oh nice, tell me more."


def build_train(rng):
    slots = dict(item=T_ITEMS, topic=T_TOPIC, country=T_COUNTRY, book=T_BOOK, event=T_EVENT,
                 thing=T_THING, dish=T_DISH, activity=T_ACTIVITY, movie=T_MOVIE, person=T_PERSON)
    rows = set()
    while len([r for r in rows if r[2] == "yes"]) < 420:
        rows.add((dress(fill(rng.choice(T_YES), rng, slots), rng), None, "yes"))
    while len([r for r in rows if r[2] == "no"]) < 420:
        rows.add((dress(fill(rng.choice(T_NO), rng, slots), rng), None, "no"))
    for _ in range(90):
        rows.add((dress(rng.choice(AMBIGUOUS), rng), hist(rng.choice(HIST_VISUAL)), "yes"))
        rows.add((dress(rng.choice(AMBIGUOUS), rng), hist(rng.choice(HIST_PLAIN)), "no"))
        rows.add((dress(rng.choice(NOT_VISUAL_FOLLOWUP), rng), hist(rng.choice(HIST_VISUAL)), "no"))
        rows.add((dress(fill(rng.choice(T_YES), rng, slots), rng), hist(rng.choice(HIST_PLAIN)), "yes"))
    rows = sorted(rows, key=lambda r: (r[0], r[1] or "", r[2]))
    rng.shuffle(rows)
    return [dict(text=t, history=h, expected=e) if h else dict(text=t, expected=e) for t, h, e in rows]


def build_eval(rng):
    slots = dict(item=E_ITEMS, food=E_FOOD, subject=E_SUBJECT, category=E_CATEGORY)
    rows = set()
    while len([r for r in rows if r[2] == "yes"]) < 100:
        rows.add((dress(fill(rng.choice(E_YES), rng, slots), rng), None, "yes"))
    while len([r for r in rows if r[2] == "no"]) < 100:
        rows.add((dress(fill(rng.choice(E_NO), rng, slots), rng), None, "no"))
    for _ in range(12):
        rows.add((dress(rng.choice(E_AMBIGUOUS), rng), hist(rng.choice(E_HIST_VISUAL)), "yes"))
        rows.add((dress(rng.choice(E_AMBIGUOUS), rng), hist(rng.choice(E_HIST_PLAIN)), "no"))
    rows = sorted(rows, key=lambda r: (r[0], r[1] or "", r[2]))
    rng.shuffle(rows)
    return [dict(text=t, history=h, expected=e) if h else dict(text=t, expected=e) for t, h, e in rows]


def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    yes = sum(r["expected"] == "yes" for r in rows)
    print(f"{path}: {len(rows)} rows ({yes} yes / {len(rows) - yes} no)")


def main():
    rng = random.Random(20261122)
    rows = build_train(rng)
    cut = int(len(rows) * 0.85)
    data = os.path.join(HERE, "data")
    os.makedirs(data, exist_ok=True)
    write(os.path.join(data, "train.jsonl"), rows[:cut])
    write(os.path.join(data, "heldout.jsonl"), rows[cut:])
    seen = {(r["text"], r.get("history")) for r in rows}
    cases = [c for c in build_eval(random.Random(7)) if (c["text"], c.get("history")) not in seen]
    write(os.path.join(data, "eval-cases.jsonl"), cases)


if __name__ == "__main__":
    main()
