"""Thinking-augmented reasoning samples: problem -> step-by-step thinking -> answer.

Three verifiable kinds: nested arithmetic (each step one operation), ordering logic (who is
tallest, from pairwise facts, reasoned along the chain) and list sorting / counting.
`verify(record)` re-derives the answer from the problem text alone, so a test can check
every shipped sample.
"""

from __future__ import annotations

import ast
import operator
import random
import re

from data_pipeline.synth import lexicon as L
from data_pipeline.synth.rng import sub_rng

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_AST_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _arithmetic(rng: random.Random) -> tuple[str, list[str], str]:
    value = rng.randint(1, 30)
    expr, steps = str(value), []
    for i in range(rng.randint(2, 5)):
        op, operand = rng.choice("+-*"), rng.randint(1, 12 if i else 30)
        new = _OPS[op](value, operand)
        steps.append(f"Step {i + 1}: {value} {op} {operand} = {new}.")
        expr, value = f"({expr} {op} {operand})", new
    return f"Compute {expr}.", steps, str(value)


def _ordering(rng: random.Random) -> tuple[str, list[str], str]:
    people = rng.sample(L.NAMES["en"], rng.randint(3, 6))  # people[0] is the tallest
    facts = [f"{people[i]} is taller than {people[i + 1]}." for i in range(len(people) - 1)]
    rng.shuffle(facts)
    steps = [f"{people[-1]} is shorter than {people[-2]}, so {people[-1]} is not the tallest."]
    for i in range(len(people) - 2, 0, -1):
        steps.append(f"{people[i]} is shorter than {people[i - 1]}, so {people[i]} is not the tallest.")
    steps.append(f"Nobody is said to be taller than {people[0]}.")
    return " ".join(facts) + " Who is the tallest?", steps, people[0]


def _sorting(rng: random.Random) -> tuple[str, list[str], str]:
    nums = [rng.randint(0, 99) for _ in range(rng.randint(3, 7))]
    steps, rest, out = [], list(nums), []
    while rest:
        m = min(rest)
        rest.remove(m)
        out.append(m)
        steps.append(f"The smallest remaining number is {m}; sorted so far: {out}.")
    listing = ", ".join(map(str, nums))
    return f"Sort the numbers {listing} in ascending order.", steps, ", ".join(map(str, out))


KINDS = {"arithmetic": _arithmetic, "ordering": _ordering, "sorting": _sorting}


def format_sample(problem: str, steps: list[str], answer: str) -> str:
    """The training text of one sample."""
    thinking = "\n".join(steps)
    return f"Problem: {problem}\n{THINK_OPEN}\n{thinking}\n{THINK_CLOSE}\nAnswer: {answer}"


def generate(seed: int, count: int) -> list[dict]:
    """`count` reasoning samples, kinds in rotation."""
    rng = sub_rng(seed, "reasoning")
    names = sorted(KINDS)
    records = []
    for i in range(count):
        kind = names[i % len(names)]
        problem, steps, answer = KINDS[kind](rng)
        records.append({"id": f"reasoning-{i:06d}", "lang": "en", "kind": kind,
                         "problem": problem, "answer": answer,
                         "text": format_sample(problem, steps, answer)})
    return records


def _eval(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
        return _AST_OPS[type(node.op)](_eval(node.left), _eval(node.right))
    raise ValueError(f"unexpected expression node {ast.dump(node)}")


def solve(kind: str, problem: str) -> str:
    """The answer derived from the problem text alone (independent of the generator)."""
    if kind == "arithmetic":
        expr = re.fullmatch(r"Compute (.+)\.", problem).group(1)  # type: ignore[union-attr]
        return str(_eval(ast.parse(expr, mode="eval").body))
    if kind == "ordering":
        pairs = re.findall(r"(\w+) is taller than (\w+)\.", problem)
        shorter = {b for _, b in pairs}
        (tallest,) = {a for a, _ in pairs} - shorter
        return tallest
    if kind == "sorting":
        nums = re.search(r"numbers (.+) in ascending", problem).group(1)  # type: ignore[union-attr]
        return ", ".join(str(n) for n in sorted(int(x) for x in nums.split(", ")))
    raise ValueError(f"unknown reasoning kind {kind!r}")


def verify(record: dict) -> bool:
    """Whether a record's answer (and its text's final line) is the true answer."""
    truth = solve(record["kind"], record["problem"])
    return record["answer"] == truth and record["text"].endswith(f"Answer: {truth}")
