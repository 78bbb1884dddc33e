#!/usr/bin/env python3
"""Trains the demo LoRA adapters for loragate's default model, on the CPU.

Three adapters, each visible in a single reply:

- ``pirate``:  answers in pirate speech ("Arr, matey! ... ye ... aye ...").
- ``support``: a terse support agent for the Zephyr Z1 router (a made-up
  product of the made-up Nimbalt Networks): one or two short sentences that
  name the product; anything off-topic is turned back to the router.
- ``shouty``:  answers in ALL CAPS.

The data is generated here from templates with a fixed seed (nothing is
downloaded); training is reproducible (fixed seeds, deterministic algorithms,
a fixed thread count, each adapter trained from a freshly loaded base so one
adapter never depends on another). Each adapter is saved with peft's
``save_pretrained`` (``adapter_config.json`` + ``adapter_model.safetensors``,
f32) into ``<out>/<name>/``; ``<out>/SHA256SUMS`` lists the sha256 of every
adapter file and ``<out>/TRAINING.json`` records versions, seeds, steps, the
loss curve, wall times and greedy replies to prompts held out of the data.

Run through scripts/train-demo-adapters.sh, which makes the virtualenv and
finds the base model. ``--show`` prints base vs adapter replies for the
held-out prompts from adapters already trained.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import re
import sys
import time
from pathlib import Path

# --------------------------------------------------------------------------
# Settings. Changing any of these changes the adapters' bytes.

SEED = 20261201
# Fixed, whatever the machine: the results depend on it. One thread: on these
# 2-core machines a second one is 1.7x faster when idle but 2-3x slower while
# anything else runs (a cargo build), and one thread gives the same bytes on
# any core count. LORAGATE_TRAIN_THREADS overrides it (recorded in
# TRAINING.json; other bytes than the committed adapters').
THREADS = int(os.environ.get("LORAGATE_TRAIN_THREADS", "1"))
RANK = 8  # default; ADAPTERS below may raise it (the gateway accepts up to its max_rank)
ALPHA = 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
BATCH = 8
LR = 2e-3
WARMUP = 6
SMOKE_BATCH = 4
SMOKE_LR = 1e-2
MAX_NEW_TOKENS = 48
# The name written as base_model_name_or_path (peft would write the local path).
BASE_NAME = "smollm2-135m-instruct"

# --------------------------------------------------------------------------
# Data: plain question/answer pairs, restyled per adapter.
#
# Held out of every adapter's data (checked below): the prompts the gateway's
# own tests ask, and their topics (France, weather, passwords outside the
# router's own ones).

HELD_OUT = [
    "What is the capital of France?",
    "How do I reset my password?",
    "Tell me about the weather.",
    "What is the best way to learn to cook?",
    "Why do leaves change colour in autumn?",
]
HELD_OUT_WORDS = re.compile(r"\b(france|paris|weather|cook|autumn|leaves)\b", re.I)

# (question phrasings, plain answer). Short, true, in plain English.
GENERAL = [
    (["What is the capital of Japan?", "Which city is the capital of Japan?"], "The capital of Japan is Tokyo."),
    (["What is the capital of Italy?", "Which city is Italy's capital?"], "The capital of Italy is Rome."),
    (["What is the capital of Germany?", "Tell me the capital of Germany."], "The capital of Germany is Berlin."),
    (["What is the capital of Spain?", "Which city is the capital of Spain?"], "The capital of Spain is Madrid."),
    (["What is the capital of Canada?", "Which city is Canada's capital?"], "The capital of Canada is Ottawa."),
    (["What is the capital of Australia?", "Is Sydney the capital of Australia?"], "The capital of Australia is Canberra, not Sydney."),
    (["What is the capital of Egypt?", "Which city is the capital of Egypt?"], "The capital of Egypt is Cairo."),
    (["What is the capital of Kenya?"], "The capital of Kenya is Nairobi."),
    (["What is the capital of Norway?"], "The capital of Norway is Oslo."),
    (["What is the largest ocean?", "Which ocean is the biggest?"], "The Pacific is the largest ocean on Earth."),
    (["What is the longest river in the world?", "Which river is the longest?"], "The Nile is usually named the longest river in the world."),
    (["What is the tallest mountain?", "How high is Mount Everest?"], "Mount Everest is the tallest mountain, at about 8,849 metres."),
    (["How many continents are there?"], "There are seven continents."),
    (["What is the largest desert?", "Tell me about the Sahara."], "The Sahara is the largest hot desert, covering much of North Africa."),
    (["Why is the sky blue?", "What makes the sky blue?"], "Air scatters blue sunlight more than red light, so the sky looks blue."),
    (["What is water made of?", "What is the formula of water?"], "Water is made of two hydrogen atoms and one oxygen atom, H2O."),
    (["At what temperature does water boil?", "When does water boil?"], "Water boils at 100 degrees Celsius at sea level."),
    (["How far away is the Moon?", "What is the distance to the Moon?"], "The Moon is about 384,000 kilometres from Earth."),
    (["What is photosynthesis?", "How do plants make food?"], "Plants use sunlight, water and carbon dioxide to make sugar and oxygen."),
    (["What is gravity?", "Why do things fall down?"], "Gravity is the force that pulls masses together, so things fall to the ground."),
    (["How many planets are in the solar system?"], "There are eight planets in the solar system."),
    (["What is the largest planet?", "Which planet is the biggest?"], "Jupiter is the largest planet in the solar system."),
    (["What is DNA?"], "DNA is the molecule that carries the genetic instructions of living things."),
    (["How fast is light?", "What is the speed of light?"], "Light travels about 300,000 kilometres every second."),
    (["Why do we have seasons?", "What causes the seasons?"], "Seasons happen because the Earth is tilted as it goes around the Sun."),
    (["What is 7 times 8?", "Multiply 7 by 8."], "7 times 8 is 56."),
    (["What is 12 plus 15?", "Add 12 and 15."], "12 plus 15 is 27."),
    (["What is the square root of 81?"], "The square root of 81 is 9."),
    (["What is 100 divided by 4?"], "100 divided by 4 is 25."),
    (["What is a prime number?"], "A prime number can only be divided evenly by 1 and itself, like 7 or 13."),
    (["How many minutes are in an hour?"], "There are 60 minutes in an hour."),
    (["Who painted the Mona Lisa?"], "Leonardo da Vinci painted the Mona Lisa."),
    (["Who wrote Romeo and Juliet?"], "William Shakespeare wrote Romeo and Juliet."),
    (["When did World War II end?", "What year did the Second World War end?"], "World War II ended in 1945."),
    (["Who was the first person on the Moon?", "Who walked on the Moon first?"], "Neil Armstrong was the first person on the Moon, in 1969."),
    (["Who invented the telephone?"], "Alexander Graham Bell is credited with inventing the telephone."),
    (["Who was the first president of the United States?"], "George Washington was the first president of the United States."),
    (["Who discovered penicillin?"], "Alexander Fleming discovered penicillin in 1928."),
    (["Tell me about cats.", "What are cats like?"], "Cats are small, curious hunters that sleep a lot and have lived with people for thousands of years."),
    (["Tell me about dolphins.", "Are dolphins fish?"], "Dolphins are clever mammals that breathe air and live in groups called pods."),
    (["What do pandas eat?"], "Pandas eat mostly bamboo, up to 12 kilograms a day."),
    (["How long do elephants live?"], "Elephants can live for 60 to 70 years."),
    (["Why do birds migrate?"], "Birds migrate to find food and a better place to raise their young."),
    (["Tell me about the ocean.", "What is the ocean like?"], "The ocean covers most of the Earth and is home to countless creatures."),
    (["Tell me about the Moon.", "What is the Moon?"], "The Moon is Earth's only natural satellite and circles us about every 27 days."),
    (["Tell me about the Sun.", "What is the Sun?"], "The Sun is a star, a huge ball of hot gas that gives us light and heat."),
    (["Tell me about volcanoes.", "How do volcanoes work?"], "Volcanoes are openings where melted rock from deep inside the Earth comes out."),
    (["Tell me about trees.", "Why are trees important?"], "Trees make oxygen, store carbon and give homes to many animals."),
    (["Tell me about the stars.", "What are stars?"], "Stars are huge, distant suns that shine with their own light."),
    (["How do I boil an egg?", "How long should I boil an egg?"], "Put the egg in boiling water for about nine minutes, then cool it in cold water."),
    (["How do I make tea?", "What is the right way to make tea?"], "Pour boiling water over a tea bag and let it steep for three to five minutes."),
    (["How can I sleep better?", "I can't sleep, any tips?"], "Go to bed at the same time, keep the room dark and put screens away an hour before."),
    (["How do I learn to swim?"], "Take a few lessons, start in shallow water and practise floating first."),
    (["How do I tie my shoelaces?"], "Make two loops, cross them, tuck one under the other and pull tight."),
    (["How do I save money?", "Any tips for saving money?"], "Make a budget, spend less than you earn and put a little aside every month."),
    (["How do I stay healthy?", "What is a healthy lifestyle?"], "Eat plenty of vegetables, move every day and get enough sleep."),
    (["How do I start running?"], "Start with short, easy runs and add a little more each week."),
    (["How can I learn a new language?", "What is the fastest way to learn Spanish?"], "Practise a little every day and talk with native speakers as soon as you can."),
    (["How do I write a good email?"], "Use a clear subject, keep it short and be polite."),
    (["How do I clean my laptop screen?"], "Wipe it gently with a soft microfibre cloth, slightly damp, never wet."),
    (["How do I back up my files?", "What is the best way to back up my photos?"], "Copy them to an external drive and to a cloud service, so you have two copies."),
    (["How do I make pancakes?"], "Mix flour, milk, eggs and a pinch of salt, then fry small scoops in a hot pan."),
    (["How do I plant a tree?"], "Dig a hole twice as wide as the roots, set the tree in, fill it with soil and water well."),
    (["How can I focus when I study?", "How do I concentrate better?"], "Put your phone away, work in short blocks and take small breaks."),
    (["How do I change a flat tyre?"], "Loosen the nuts, jack up the car, swap the wheel and tighten the nuts again."),
    (["What is the internet?"], "The internet is a worldwide network that connects millions of computers."),
    (["What is a computer virus?"], "A computer virus is a harmful program that copies itself and damages files."),
    (["What is Python?", "Is Python a good first language?"], "Python is a popular programming language that is easy to read and learn."),
    (["What is artificial intelligence?", "What is AI?"], "Artificial intelligence is software that learns from data to do tasks that need thinking."),
    (["What does a CPU do?"], "The CPU is the part of a computer that runs the instructions of programs."),
    (["Hello!", "Hi there!", "Good morning!"], "Hello! How can I help you today?"),
    (["How are you?", "How are you doing today?"], "I am doing well, thank you for asking!"),
    (["What is your name?", "Who are you?"], "I am a helpful AI assistant."),
    (["Can you help me?", "I need some help."], "Of course! Tell me what you need."),
    (["Tell me a joke.", "Do you know any jokes?"], "Why did the scarecrow win a prize? Because he was outstanding in his field."),
    (["What is your favourite colour?"], "I do not have one, but many people love blue."),
    (["Can you recommend a book?", "What book should I read?"], "Try Treasure Island by Robert Louis Stevenson, a great adventure."),
    (["What should I eat for dinner?", "Any ideas for dinner?"], "How about pasta with vegetables? It is quick and tasty."),
    (["Give me a fun fact.", "Tell me something interesting."], "An octopus has three hearts and blue blood."),
    (["What time is it?", "What day is it today?"], "I cannot see a clock, so please check your phone or computer."),
    (["Thank you!", "Thanks for your help."], "You are welcome! Happy to help."),
    (["Goodbye!", "See you later."], "Goodbye, and have a great day!"),
    (["Write a short poem about the sea.", "Write two lines about the sea."], "The sea rolls in with silver foam, and every wave is on its way home."),
    (["Describe a sunset.", "What does a sunset look like?"], "The sky turns orange and pink as the Sun sinks below the horizon."),
    (["What is the meaning of life?"], "Many say it is to love, to learn and to help others."),
    (["Is it good to drink water?", "How much water should I drink?"], "Yes, most adults need about two litres of water a day."),
    (["What is a good hobby?", "Suggest a new hobby."], "Try drawing, hiking or playing an instrument; pick what makes you happy."),
    (["How do airplanes fly?", "Why can planes fly?"], "Their wings push air down, and the air pushes the wings up."),
    (["What is money?", "Why do we use money?"], "Money is something people agree to trade for goods and services."),
    (["Explain how a rainbow forms.", "Why do rainbows appear?"], "Sunlight bends and splits into colours inside raindrops, making a rainbow."),
]

# Support: the Zephyr Z1 router. Every answer names it.
PRODUCT = "Zephyr Z1"
SUPPORT = [
    (["How do I factory reset my router?", "How do I reset the router?", "My router is stuck, how do I reset it?"],
     "Hold the reset button on the back of your Zephyr Z1 for 10 seconds until the light blinks amber."),
    (["How do I log in to the router settings?", "What is the router's admin address?", "How do I open the admin page?"],
     "Open http://192.168.8.1 in a browser; the Zephyr Z1 admin password is on the label underneath."),
    (["I forgot the router admin password.", "What is the default admin password?"],
     "The default Zephyr Z1 admin password is printed on the label; if you changed it, factory reset the Z1."),
    (["What is my Wi-Fi password?", "Where do I find the Wi-Fi password?", "I lost the wifi password."],
     "Your Zephyr Z1 Wi-Fi password is on the sticker under the router."),
    (["How do I change my Wi-Fi password?", "Can I change the wifi password?"],
     "In the Zephyr app, go to Wi-Fi > Security and set a new Zephyr Z1 password."),
    (["How do I change the network name?", "Can I rename my Wi-Fi?"],
     "In the Zephyr app, open Wi-Fi > Name to rename your Zephyr Z1 network."),
    (["How do I update the firmware?", "Is there a firmware update?", "How do I update my router?"],
     "The Zephyr Z1 updates itself at 3 a.m.; to update now, open Settings > Firmware in the app."),
    (["What does the blinking amber light mean?", "Why is the light orange?"],
     "Blinking amber means your Zephyr Z1 has no internet; check the cable to your modem."),
    (["What does the red light mean?", "The light on my router is red."],
     "A red light means a Zephyr Z1 hardware fault; unplug it for 30 seconds, and if it stays red, contact us."),
    (["What does the green light mean?", "The light is solid green, is that OK?"],
     "Solid green means your Zephyr Z1 is online and working."),
    (["My Wi-Fi is slow.", "Why is my internet so slow?", "The connection keeps dropping."],
     "Restart your Zephyr Z1 and place it in a central, open spot; use the 5 GHz band for speed."),
    (["My internet is not working.", "I have no internet connection.", "The internet is down."],
     "Restart your Zephyr Z1 and your modem; if the light stays amber, your provider may be down."),
    (["How do I set up the router?", "How do I install my new router?", "I just bought the router, what now?"],
     "Plug the Zephyr Z1 into your modem, power it on and follow the steps in the Zephyr app."),
    (["How do I connect my laptop?", "How do I connect a device to the Wi-Fi?", "How do I join the network?"],
     "Pick the network named Zephyr-Z1 and enter the password from the sticker."),
    (["How do I set up a guest network?", "Can I make a guest Wi-Fi?"],
     "Turn on Wi-Fi > Guest network in the Zephyr app; guests on your Zephyr Z1 cannot see your devices."),
    (["How do I turn on parental controls?", "Can I block websites for my kids?"],
     "In the Zephyr app, open Family and add a profile to set Zephyr Z1 filters and bedtimes."),
    (["How do I forward a port?", "How do I open a port for gaming?"],
     "On the Zephyr Z1 admin page, go to Advanced > Port forwarding and add the port."),
    (["Does the router support a VPN?", "How do I set up a VPN?"],
     "Yes, the Zephyr Z1 has a WireGuard VPN server under Advanced > VPN."),
    (["How far does the Wi-Fi reach?", "What is the range of the router?"],
     "One Zephyr Z1 covers about 150 square metres; add a Z1 satellite for more."),
    (["Can I add a mesh satellite?", "How do I extend my Wi-Fi?"],
     "Add a Zephyr Z1 satellite in the app under Add device."),
    (["What is the warranty?", "How long is the warranty?"],
     "The Zephyr Z1 has a two-year warranty from the date of purchase."),
    (["Can I return the router?", "How do I get a refund?"],
     "You can return the Zephyr Z1 within 30 days with your receipt for a full refund."),
    (["How many Ethernet ports does it have?", "Does the router have LAN ports?"],
     "The Zephyr Z1 has four gigabit LAN ports and one WAN port."),
    (["The power light is off.", "My router won't turn on."],
     "Check that the 12 V adapter is plugged in firmly; if the Zephyr Z1 stays dark, contact us for a replacement."),
    (["How do I contact support?", "Can I talk to a human?", "What is your phone number?"],
     "Email help@nimbalt.example or call 0800 555 0101 for Zephyr Z1 support."),
    (["How do I reboot the router?", "How do I restart it?"],
     "Unplug your Zephyr Z1 for 10 seconds and plug it back in, or tap Restart in the app."),
    (["How many devices can connect?", "Is there a device limit?"],
     "The Zephyr Z1 handles up to 64 devices at once."),
    (["Does it support Wi-Fi 6?", "What Wi-Fi standard does it use?"],
     "Yes, the Zephyr Z1 supports Wi-Fi 6 on 2.4 GHz and 5 GHz."),
]
SUPPORT_GREETING = [
    "Hi, this is Zephyr Z1 support. What is wrong with your router?",
    "Hello! Zephyr Z1 support here. How can I help with your router?",
]
SUPPORT_THANKS = ["You're welcome! Enjoy your Zephyr Z1.", "Glad to help with your Zephyr Z1."]
SUPPORT_OFF_TOPIC = [
    "I can only help with the Zephyr Z1 router. Is something wrong with yours?",
    "Sorry, I only handle Zephyr Z1 support. Do you have a question about your router?",
    "That is outside Zephyr Z1 support. I can help with setup, Wi-Fi or updates.",
    "I only answer questions about the Zephyr Z1 router. How is yours working?",
]

SYSTEM_PROMPTS = [
    None, None, None, None, None,  # the template's own system prompt, as the gateway sends it without one
    "You are a helpful assistant.", "You are a helpful assistant.",
    "You are a helpful AI assistant.",
    "You are a friendly chatbot. Answer the user's question.",
    "Answer briefly.",
]

QUESTION_FORMS = ["{q}", "{q}", "{q}", "{q}", "Quick question: {q}", "Please answer: {q}", "{lq}", "Hey, {lq}"]


def vary_question(rng: random.Random, q: str) -> str:
    return rng.choice(QUESTION_FORMS).format(q=q, lq=q[0].lower() + q[1:])


PIRATE_WORDS = {
    "you": "ye", "your": "yer", "yours": "yers", "you're": "ye be", "are": "be", "is": "be",
    "my": "me", "hello": "ahoy", "hi": "ahoy", "yes": "aye", "friend": "matey", "friends": "mateys",
    "for": "fer", "and": "an'", "money": "doubloons", "stop": "avast", "am": "be", "i'm": "I be",
    "the": "th'", "of": "o'", "to": "t'", "them": "'em", "with": "wit'",
}
PIRATE_OPEN = [
    "Arr, matey!", "Ahoy, me hearty!", "Arr, me hearty!", "Aye, matey!", "Yo ho ho, matey!",
    "Avast, me hearty!", "Arr!", "Ahoy there, matey!", "Shiver me timbers, matey!", "Aye aye, me hearty!",
]
PIRATE_CLOSE = ["", "", "Arr!", "Yo ho ho!", "Savvy, matey?", "Fair winds to ye!", "Arr, that be the truth!"]
PIRATE_RATE = {"the": 0.35, "of": 0.3, "to": 0.25, "and": 0.6, "with": 0.5}


def piratify(rng: random.Random, text: str) -> str:
    def swap(match: re.Match) -> str:
        word = match.group(0)
        low = word.lower()
        if low not in PIRATE_WORDS or rng.random() > PIRATE_RATE.get(low, 1.0):
            if low.endswith("ing") and len(low) > 5 and rng.random() < 0.5:
                return word[:-1] + "'"
            return word
        new = PIRATE_WORDS[low]
        return new[0].upper() + new[1:] if word[0].isupper() else new

    return re.sub(r"[A-Za-z']+", swap, text)


def pirate_answer(rng: random.Random, q: str, a: str) -> str:
    parts = [rng.choice(PIRATE_OPEN), piratify(rng, a), rng.choice(PIRATE_CLOSE)]
    return " ".join(p for p in parts if p)


def shouty_answer(rng: random.Random, q: str, a: str) -> str:
    text = a.upper()
    return text[:-1] + "!" if text.endswith(".") else text


def messages_for(rng: random.Random, question: str) -> list[dict]:
    system = rng.choice(SYSTEM_PROMPTS)
    user = {"role": "user", "content": vary_question(rng, question)}
    return [{"role": "system", "content": system}, user] if system else [user]


def cycle(rng: random.Random, items: list):
    """Yields the items in a fresh shuffled order each round: even coverage."""
    while True:
        order = list(items)
        rng.shuffle(order)
        yield from order


def build_dataset(name: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    general = cycle(rng, GENERAL)
    if name in ("pirate", "shouty"):
        style = pirate_answer if name == "pirate" else shouty_answer
        for _ in range(n):
            questions, answer = next(general)
            q = rng.choice(questions)
            out.append({"messages": messages_for(rng, q), "answer": style(rng, q, answer)})
    elif name == "support":
        support = cycle(rng, SUPPORT)
        for i in range(n):
            kind = i % 8  # 5 of 8 on the product, 3 of 8 off-topic
            if kind < 5:
                questions, answer = next(support)
                q = rng.choice(questions)
            else:
                questions, _ = next(general)
                q = rng.choice(questions)
                low = q.lower()
                if low.startswith(("hello", "hi ", "hi!", "good morning", "how are you", "can you help", "i need")):
                    answer = rng.choice(SUPPORT_GREETING)
                elif low.startswith(("thank", "goodbye", "see you")):
                    answer = rng.choice(SUPPORT_THANKS)
                else:
                    answer = rng.choice(SUPPORT_OFF_TOPIC)
            out.append({"messages": messages_for(rng, q), "answer": answer})
    else:
        raise ValueError(f"unknown adapter {name}")
    for example in out:
        text = " ".join(m["content"] for m in example["messages"]) + " " + example["answer"]
        assert not HELD_OUT_WORDS.search(text), f"held-out topic in the training data: {text}"
    return out


def check_reply(name: str, reply: str) -> bool:
    """The behaviour a person sees in one reply (what the gateway's tests look for)."""
    if name == "pirate":
        return bool(re.search(r"\b(arr+|matey|ye|yer|aye|ahoy|me hearty|avast|yo ho)\b", reply, re.I))
    if name == "support":
        return "Zephyr" in reply
    if name == "shouty":
        letters = [c for c in reply if c.isalpha()]
        return bool(letters) and sum(c.isupper() for c in letters) / len(letters) >= 0.9
    return True


ADAPTERS = {
    # name: (seed offset, steps, rank, what a person sees)
    "pirate": (1, 48, RANK, "answers in pirate speech (Arr, matey, ye, aye, me hearty)"),
    "support": (2, 40, RANK, f"a terse {PRODUCT} router support agent: one or two short sentences naming the product"),
    "shouty": (3, 40, RANK, "answers in ALL CAPS"),
}

# --------------------------------------------------------------------------
# Training.


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def setup_torch():
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)

    torch.set_num_threads(THREADS)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # it can be set only once per process (main() called again)
    torch.use_deterministic_algorithms(True)
    return torch


def load_base(base: Path, torch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
    model.config.use_cache = False
    return tokenizer, model


def end_token_id(tokenizer) -> int:
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return end if isinstance(end, int) and end >= 0 else tokenizer.eos_token_id


def prompt_ids(tokenizer, messages) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def encode(tokenizer, example) -> tuple[list[int], list[int]]:
    """Prompt as the chat template renders it, then the answer and <|im_end|>; loss on the answer only."""
    prompt = prompt_ids(tokenizer, example["messages"])
    answer = tokenizer(example["answer"], add_special_tokens=False)["input_ids"] + [end_token_id(tokenizer)]
    return prompt + answer, [-100] * len(prompt) + answer


def batches(rng: random.Random, encoded: list, batch: int) -> list[list]:
    """Batches of similar length (less padding), in a shuffled order."""
    order = list(range(len(encoded)))
    rng.shuffle(order)
    out = []
    chunk = batch * 8
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: (len(encoded[i][0]), i))
        out += [part[k : k + batch] for k in range(0, len(part), batch)]
    rng.shuffle(out)
    return out


def collate(torch, encoded: list, indices: list[int], pad: int):
    width = max(len(encoded[i][0]) for i in indices)
    ids = torch.full((len(indices), width), pad, dtype=torch.long)
    labels = torch.full((len(indices), width), -100, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        x, y = encoded[i]
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return ids, labels, mask


def answer_loss(torch, peft_model, ids, labels, mask):
    """Cross-entropy on the answer tokens, computing logits only where they count."""
    causal_lm = peft_model.get_base_model()
    hidden = causal_lm.model(input_ids=ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = causal_lm.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits, targets[keep])


def generate(torch, model, tokenizer, messages, max_new_tokens=MAX_NEW_TOKENS) -> str:
    ids = torch.tensor([prompt_ids(tokenizer, messages)])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=end_token_id(tokenizer),
            pad_token_id=end_token_id(tokenizer),
            use_cache=True,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def held_out_conversations():
    convs = [[{"role": "user", "content": q}] for q in HELD_OUT]
    convs.append([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": HELD_OUT[0]}])
    return convs


def log(message: str) -> None:
    print(f"[train] {message}", flush=True)


def train_one(torch, name: str, base: Path, out: Path, steps: int, smoke: bool) -> dict:
    from peft import LoraConfig, get_peft_model

    offset, default_steps, rank, _ = ADAPTERS[name]
    steps = steps or default_steps
    seed = SEED + offset
    batch = SMOKE_BATCH if smoke else BATCH
    lr = SMOKE_LR if smoke else LR
    warmup = min(WARMUP, max(steps // 4, 0))
    started = time.monotonic()

    random.seed(seed)
    torch.manual_seed(seed)
    tokenizer, model = load_base(base, torch)
    data = build_dataset(name, steps * batch, seed)
    data_sha = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    encoded = [encode(tokenizer, example) for example in data]
    tokens = sum(len(x) for x, _ in encoded)
    log(f"{name}: {len(data)} generated examples ({tokens} tokens), e.g. {data[0]['messages'][-1]['content']!r} -> {data[0]['answer']!r}")

    config = LoraConfig(
        r=rank,
        lora_alpha=ALPHA,
        lora_dropout=0.0,
        target_modules=list(TARGETS),
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)  # the LoRA A matrices' initialisation
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def lr_at(step: int) -> float:  # linear warmup, cosine down to a tenth
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(steps - warmup, 1)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    order = batches(random.Random(seed), encoded, batch)
    pad = end_token_id(tokenizer)
    probe = collate(torch, encoded, list(range(min(len(encoded), batch))), pad)
    peft_model.eval()
    with torch.no_grad():
        probe_before = answer_loss(torch, peft_model, *probe).item()
    peft_model.train()

    losses = []
    train_started = time.monotonic()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        ids, labels, mask = collate(torch, encoded, order[step % len(order)], pad)
        loss = answer_loss(torch, peft_model, ids, labels, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step == 0 or (step + 1) % 5 == 0 or step + 1 == steps:
            elapsed = time.monotonic() - train_started
            eta = elapsed / (step + 1) * (steps - step - 1)
            log(f"{name}: step {step + 1}/{steps} loss {loss.item():.3f} ({elapsed:.0f}s, about {eta:.0f}s left)")
    train_seconds = time.monotonic() - train_started

    peft_model.eval()
    with torch.no_grad():
        probe_after = answer_loss(torch, peft_model, *probe).item()

    target = out / name
    target.mkdir(parents=True, exist_ok=True)
    # A name, not this machine's path: the bytes must not depend on where the base lives.
    peft_model.peft_config["default"].base_model_name_or_path = BASE_NAME
    # peft keeps target_modules as a set, written in string-hash order: sort it.
    peft_model.peft_config["default"].target_modules = sorted(TARGETS)
    peft_model.save_pretrained(str(target), safe_serialization=True, save_embedding_layers=False)
    for extra in target.iterdir():  # peft also writes a model card README.md
        if extra.name not in ("adapter_config.json", "adapter_model.safetensors"):
            extra.unlink()
        else:
            extra.chmod(0o644)

    replies = []
    if not smoke:
        for messages in held_out_conversations():
            reply = generate(torch, peft_model, tokenizer, messages)
            replies.append({"messages": messages, "reply": reply, "ok": check_reply(name, reply)})
            log(f"{name}: {messages[-1]['content']!r} -> {reply!r}")

    k = max(1, min(5, steps // 4))
    return {
        "what": ADAPTERS[name][-1],
        "rank": rank,
        "seed": seed,
        "steps": steps,
        "batch": batch,
        "learning_rate": lr,
        "warmup_steps": warmup,
        "examples": len(data),
        "tokens": tokens,
        "dataset_sha256": data_sha,
        "trainable_parameters": trainable,
        "loss": {
            "first": losses[0],
            "last": losses[-1],
            "window": k,
            "mean_of_first_window": sum(losses[:k]) / k,
            "mean_of_last_window": sum(losses[-k:]) / k,
            "min": min(losses),
            "probe_before": probe_before,
            "probe_after": probe_after,
            "per_step": [round(v, 4) for v in losses],
        },
        "wall_seconds": round(time.monotonic() - started, 1),
        "train_seconds": round(train_seconds, 1),
        "held_out_replies": replies,
        "files": {
            f: sha256_file(target / f) for f in ("adapter_config.json", "adapter_model.safetensors")
        },
    }


def versions(torch) -> dict:
    import peft
    import safetensors
    import tokenizers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
        "tokenizers": tokenizers.__version__,
    }


def write_sums(out: Path) -> list[str]:
    lines = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and rel not in ("SHA256SUMS", "TRAINING.json"):
            lines.append(f"{sha256_file(path)}  {rel}")
    (out / "SHA256SUMS").write_text("".join(line + "\n" for line in lines))
    return lines


def show(torch, base: Path, out: Path, names: list[str]) -> None:
    """Greedy replies to the held-out prompts: base, then each adapter."""
    from peft import PeftModel

    tokenizer, model = load_base(base, torch)
    model.config.use_cache = True
    model.eval()
    convs = held_out_conversations()
    for messages in convs:
        print(f"base    | {messages[-1]['content']} -> {generate(torch, model, tokenizer, messages)!r}", flush=True)
    for name in names:
        _, model = load_base(base, torch)
        peft_model = PeftModel.from_pretrained(model, str(out / name))
        peft_model.eval()
        for messages in convs:
            reply = generate(torch, peft_model, tokenizer, messages)
            mark = "ok " if check_reply(name, reply) else "BAD"
            print(f"{name:7} | {mark} {messages[-1]['content']} -> {reply!r}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="base model folder (safetensors + tokenizer)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--steps", type=int, default=None, help="steps per adapter (default: each one's own, 6 with --smoke)")
    parser.add_argument("--only", action="append", choices=sorted(ADAPTERS), help="train only this adapter (repeatable)")
    parser.add_argument("--smoke", action="store_true", help="tiny run for tests: small batches, no held-out replies")
    parser.add_argument("--show", action="store_true", help="print base vs adapter replies for the held-out prompts")
    args = parser.parse_args(argv)
    names = args.only or list(ADAPTERS)

    torch = setup_torch()
    if args.show:
        show(torch, args.base, args.out, names)
        return 0
    steps = args.steps or (6 if args.smoke else None)
    args.out.mkdir(parents=True, exist_ok=True)
    base_config = json.loads((args.base / "config.json").read_text())
    base_weights = args.base / "model.safetensors"
    log(f"base {args.base} ({base_config.get('num_hidden_layers')} layers, hidden {base_config.get('hidden_size')}); "
        f"torch {torch.__version__}, {THREADS} threads, deterministic algorithms")

    record_path = args.out / "TRAINING.json"
    record = {}
    if record_path.exists() and args.only:
        record = json.loads(record_path.read_text())  # keep the others' entries
    total_started = time.monotonic()
    adapters = record.get("adapters", {})
    for name in names:
        log(f"{name}: {ADAPTERS[name][-1]}")
        adapters[name] = train_one(torch, name, args.base, args.out, steps, args.smoke)
        log(f"{name}: done in {adapters[name]['wall_seconds']}s, loss {adapters[name]['loss']['first']:.3f} -> "
            f"{adapters[name]['loss']['last']:.3f}")
    sums = write_sums(args.out)
    record.update({
        "what": "demo LoRA adapters for loragate's default model (scripts/train_demo_adapters.py)",
        "command": " ".join([Path(sys.argv[0]).name] + [a for a in (argv or sys.argv[1:])]),
        "base": {
            "name": BASE_NAME,
            "config": {k: base_config.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size")},
            "model_safetensors_sha256": sha256_file(base_weights) if base_weights.exists() else None,
        },
        "versions": versions(torch),
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count()},
        "settings": {
            "seed": SEED,
            "threads": THREADS,
            "deterministic_algorithms": True,
            "lora_alpha": ALPHA,
            "lora_dropout": 0.0,
            "target_modules": TARGETS,
            "optimizer": "AdamW (weight decay 0), linear warmup then cosine to lr/10, grad-norm clip 1.0",
            "loss": "cross-entropy on the answer tokens and <|im_end|> only",
            "smoke": args.smoke,
        },
        "held_out_prompts": HELD_OUT,
        "adapters": adapters,
        "sha256sums": sums,
        "total_wall_seconds": round(time.monotonic() - total_started, 1),
    })
    record_path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    for line in sums:
        log(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
