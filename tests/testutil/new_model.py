"""The README's "Adding a model", followed step by step in a scratch clone, with a model type no
example uses: a naive Bayes SMS spam filter in the standard library. Used by the test that
checks the guide (tests/integration:new_model) and by the bench that times it (bench/iteration.py).

Its requirements file pins nothing, so `generate-lockfiles` resolves nothing: the steps reach
no index (tests and benches talk to 127.0.0.1 only); a model with requirements resolves them
from the configured index at that step and is otherwise the same.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List

NAME = "spam"

HANDLER = '''"""SMS spam filter: multinomial naive Bayes over words, in the standard library alone."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

WORD = re.compile(r"[a-z0-9']+")


@dataclass
class Message:
    text: str


@dataclass
class Verdict:
    spam: bool
    probability: float  # of spam


class SpamFilter:
    def load(self) -> None:
        self.counts = json.loads((Path(__file__).parent / "artifacts" / "counts.json").read_text())

    def predict(self, messages: list[Message]) -> list[Verdict]:
        return [self._judge(m.text) for m in messages]

    def _judge(self, text: str) -> Verdict:
        scores = {}
        for label in ("ham", "spam"):
            stats = self.counts[label]
            total = sum(stats["words"].values()) + len(self.counts["vocabulary"])
            score = math.log(stats["messages"])
            for word in WORD.findall(text.lower()):
                score += math.log((stats["words"].get(word, 0) + 1) / total)
            scores[label] = score
        top = max(scores.values())
        odds = {label: math.exp(s - top) for label, s in scores.items()}
        probability = odds["spam"] / sum(odds.values())
        return Verdict(spam=probability > 0.5, probability=probability)
'''

TRAINER = '''"""Counts the words of the bundled messages into artifacts/counts.json."""

import collections
import csv
import json
import re
from pathlib import Path

HERE = Path(__file__).parent
WORD = re.compile(r"[a-z0-9']+")

counts = {"ham": {"messages": 0, "words": collections.Counter()}, "spam": {"messages": 0, "words": collections.Counter()}}
with open(HERE / "data" / "messages.csv", newline="") as f:
    for label, text in csv.reader(f):
        counts[label]["messages"] += 1
        counts[label]["words"].update(WORD.findall(text.lower()))
vocabulary = sorted(set(counts["ham"]["words"]) | set(counts["spam"]["words"]))
(HERE / "artifacts").mkdir(exist_ok=True)
(HERE / "artifacts" / "counts.json").write_text(json.dumps({**counts, "vocabulary": vocabulary}, sort_keys=True))
print(f"trained on {counts['ham']['messages'] + counts['spam']['messages']} messages, {len(vocabulary)} words")
'''

MESSAGES = """ham,are we still on for lunch tomorrow
ham,can you send me the slides from the meeting
ham,running late be there in ten minutes
ham,thanks for dinner last night it was lovely
ham,call me when you get home
ham,the train is delayed again see you at six
spam,winner you have won a free prize call now to claim
spam,urgent your account is suspended click the link to verify
spam,free entry win cash now text win to claim your prize
spam,congratulations you won a free cruise claim now
spam,cheap loans approved instantly no credit check call now
spam,you have been selected for a cash reward click to claim
"""

FILES = {
    "model.py": HANDLER,
    "requirements.txt": "# The standard library is enough: nothing to pin.\n",
    "train.py": TRAINER,
    "data/messages.csv": MESSAGES,
}


@dataclass
class Walkthrough:
    """What following the guide did: the files written, lines added outside the model's folder,
    and seconds per step."""

    files_written: List[str] = field(default_factory=list)
    lines_outside: List[str] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)

    def step(self, name: str, action: Callable[[], object]) -> object:
        started = time.perf_counter()
        result = action()
        self.seconds[name] = time.perf_counter() - started
        return result


def pants(repo: Path, *args: str) -> str:
    result = subprocess.run(["./pants", "--no-dynamic-ui", *args], cwd=repo, capture_output=True, text=True,
                            env={**os.environ, "PANTS_CONCURRENT": "true"})
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise AssertionError(f"./pants {' '.join(args)} failed:\n{output[-6000:]}")
    return output


def add_resolve_line(repo: Path, line: str) -> None:
    """What a person does with the line `tailor` prints: under [python.resolves] in pants.toml."""
    config = repo / "pants.toml"
    text = config.read_text()
    header = "[python.resolves]\n"
    assert header in text, "pants.toml has no [python.resolves]"
    config.write_text(text.replace(header, header + line + "\n", 1))


def follow_the_guide(repo: Path, deploy_env: str) -> Walkthrough:
    """From an empty folder to a model deployed behind the local gateway of `deploy_env`."""
    walk = Walkthrough()
    folder = repo / "models" / NAME / "src"
    folder.mkdir(parents=True)
    for path, text in FILES.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(text)
        walk.files_written.append(f"models/{NAME}/src/{path}")
    tailored = walk.step("tailor", lambda: pants(repo, "tailor", "::"))
    assert (repo / "models" / NAME / "BUILD").is_file(), tailored
    walk.files_written.append(f"models/{NAME}/BUILD (by tailor)")
    match = re.search(rf'^\s*({NAME} = "models/{NAME}/{NAME}\.lock")$', tailored, re.M)
    assert match, f"tailor did not print the pants.toml line:\n{tailored}"
    add_resolve_line(repo, match.group(1))
    walk.lines_outside.append(f"pants.toml: {match.group(1)}")
    walk.step("generate-lockfiles", lambda: pants(repo, "--python-repos-indexes=[]", "generate-lockfiles", f"--resolve={NAME}"))
    trained = walk.step("train", lambda: pants(repo, "run", f"models/{NAME}/src/train.py"))
    assert "trained on 12 messages" in trained, trained
    assert (folder / "artifacts" / "counts.json").is_file()
    walk.step("deploy", lambda: pants(repo, "deploy", f"--deploy-env={deploy_env}", f"models/{NAME}:"))
    return walk


def ask(gateway_port: int, text: str) -> dict:
    """One message to the deployed filter, through the gateway by its name."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway_port}/v1/predict", data=json.dumps({"messages": [{"text": text}]}).encode(),
        headers={"Host": f"{NAME}.ml.localhost", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)[0]
