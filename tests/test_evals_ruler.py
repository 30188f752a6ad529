"""RULER generators and scoring: exact lengths on our tokenizers, answers present, depths honoured."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from adasplash_train.data.tokenizers import build_tokenizer
from evals.ruler import SYNTHETIC_TASKS, build_task, qa_skip_reason, string_match_all, string_match_part
from evals.ruler.fitting import BudgetTooSmall
from evals.ruler.haystack import load_essay_haystack, split_sentences
from evals.ruler.niah import NiahTask
from evals.ruler.scoring import score_sample

TOLERANCE = 8  # tokens a prompt may fall short of its budget (one haystack unit at most)


@pytest.fixture(scope="module", params=["byte", "gpt2"])
def tokenizer(request):
    return build_tokenizer(request.param)


def length_for(tokenizer) -> int:
    # bytes are ~4x more tokens than BPE; cwe's solved example alone needs ~7k bytes
    return 12288 if tokenizer.name == "byte" else 3072


# ---------------------------------------------------------------- scoring


def test_string_match_all_hand_cases():
    predictions = ["The numbers are 123 and 456.", "only 123", "NOTHING", "ApPlE-pie"]
    references = [["123", "456"], ["123", "456"], ["123"], ["apple-PIE"]]
    assert string_match_all(predictions, references) == pytest.approx(100 * (1 + 0.5 + 0 + 1) / 4)


def test_string_match_part_hand_cases():
    predictions = ["Paris, France", "london", "\tBerlin\x00", "Rome"]
    references = [["paris", "lyon"], ["Paris"], ["berlin"], ["Madrid", "Lisbon"]]
    assert string_match_part(predictions, references) == pytest.approx(50.0)


def test_score_sample_postprocesses_and_rejects_bad_input():
    assert score_sample("  \x01 abc", ["ABC"], "all") == 1.0
    with pytest.raises(ValueError, match="metric"):
        score_sample("x", ["x"], "exact")
    with pytest.raises(ValueError, match="non-empty list"):
        score_sample("x", "x", "all")
    with pytest.raises(ValueError, match="predictions"):
        string_match_all(["a"], [["a"], ["b"]])


# ---------------------------------------------------------------- generators


@pytest.mark.parametrize("name", SYNTHETIC_TASKS)
def test_generator_hits_length_and_contains_answers(tokenizer, name):
    length = length_for(tokenizer)
    task = build_task(name, tokenizer)
    for sample in task.samples(length, num_samples=2, seed=7):
        total = len(tokenizer.encode(sample.prompt)) + sample.tokens_to_generate
        assert sample.num_prompt_tokens + sample.tokens_to_generate == total
        assert length - TOLERANCE <= total <= length, (name, total)
        assert sample.answers and all(isinstance(answer, str) and answer for answer in sample.answers)
        check_answers(name, sample)


def check_answers(name, sample):
    prompt = sample.prompt
    if name.startswith("niah"):
        for value in sample.answers:
            needle = re.search(r"One of the special magic \w+ for (\S+) is: " + re.escape(value) + r"\.", prompt)
            assert needle, value
            question = prompt[prompt.rindex("What "):]
            assert needle.group(1) in question  # the key of every answer is asked for
        assert prompt.endswith("mentioned in the provided text " + ("is" if len(sample.answers) == 1 else "are"))
    elif name == "vt":
        question = prompt[prompt.rindex("Memorize and track"):]
        value = sample.meta["value"]
        names = sample.answers
        chain = [f"VAR {names[0]} = {value}"] + [f"VAR {b} = VAR {a}" for a, b in zip(names, names[1:])]
        positions = [question.index(statement) for statement in chain]
        assert positions == sorted(positions)
        assert f"the value {value}, they are: " in question
    elif name == "cwe":
        question = prompt[prompt.rindex("Below is a numbered list"):]
        words = re.findall(r"\d+\. (\S+)", question.split("\nQuestion:")[0])
        counts = Counter(words)
        assert all(counts[word] == sample.meta["freq_cw"] for word in sample.answers)
        others = [count for word, count in counts.items() if word not in sample.answers]
        assert others and max(others) <= sample.meta["freq_ucw"]
    elif name == "fwe":
        context = prompt.split("coded words. ", 1)[1].split("\nQuestion:")[0]
        ranked = [word for word, _ in Counter(context.split()).most_common() if word != "..."]
        counts = Counter(context.split())
        assert sorted(counts[w] for w in sample.answers) == sorted(counts[w] for w in ranked[:3])
        assert counts[sample.answers[2]] > counts[ranked[3]]
    else:
        raise AssertionError(f"no answer check for {name}")


def test_samples_are_reproducible_and_distinct(tokenizer):
    task = build_task("niah_multikey_2", tokenizer)
    first = task.samples(length_for(tokenizer), 3, seed=1)
    again = build_task("niah_multikey_2", tokenizer).samples(length_for(tokenizer), 3, seed=1)
    assert [s.prompt for s in first] == [s.prompt for s in again]
    assert len({s.prompt for s in first}) == 3
    other_seed = task.sample(0, length_for(tokenizer), seed=2)
    assert other_seed.prompt != first[0].prompt


@pytest.mark.parametrize("haystack", ["essay", "noise", "needle"])
def test_needle_sits_at_requested_depth(tokenizer, haystack):
    length = length_for(tokenizer)
    for depth in (0, 10, 35, 50, 90, 100):
        task = NiahTask(f"depth_{haystack}", tokenizer, type_haystack=haystack, depths=[depth], depth_mode="tokens")
        sample = task.sample(0, length)
        (needle_start,) = sample.meta["needle_char_offsets"]
        context_start, context_end = sample.meta["context_char_span"]
        needle = sample.meta["needles"][0]
        before_text = sample.prompt[context_start:needle_start].strip()
        after_text = sample.prompt[needle_start + len(needle):context_end].strip()
        before, after = len(tokenizer.encode(before_text)), len(tokenizer.encode(after_text))
        # the needle sits on the unit boundary nearest the depth: off by at most half a unit
        units_before = split_sentences(before_text) if haystack == "essay" else before_text.split("\n")
        units_after = split_sentences(after_text) if haystack == "essay" else after_text.split("\n")
        neighbours = [units_before[-1]] if units_before else []
        neighbours += [units_after[0]] if units_after else []
        neighbour = max(len(tokenizer.encode(unit)) for unit in neighbours)
        assert abs(before - depth / 100 * (before + after)) <= neighbour / 2 + 2, (depth, before, after)


def test_ruler_depth_rule_counts_lines(tokenizer):
    # RULER's own rule (depth_mode="units"): the needle follows int(depth% x number of lines) lines
    for depth in (0, 30, 77, 100):
        task = NiahTask("units", tokenizer, type_haystack="noise", depths=[depth])
        sample = task.sample(0, length_for(tokenizer))
        start, end = sample.meta["context_char_span"]
        lines = sample.prompt[start:end].split("\n")
        position = lines.index(sample.meta["needles"][0])
        assert position == int((len(lines) - 1) * depth / 100)


def test_too_short_length_names_the_minimum(tokenizer):
    with pytest.raises(BudgetTooSmall, match="request a longer length"):
        build_task("cwe", tokenizer).sample(0, 200)
    with pytest.raises(ValueError, match="generation budget"):
        build_task("niah_single_1", tokenizer).sample(0, 100)


def test_haystack_dir_is_used_and_validated(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("Zebras graze quietly.   Otters float on rivers!\n" * 40)
    assert load_essay_haystack(tmp_path).text.startswith("Zebras graze quietly. Otters")
    sample = build_task("niah_single_2", tokenizer, haystack_dir=tmp_path).sample(0, length_for(tokenizer))
    assert "Otters float on rivers!" in sample.prompt and sample.meta["haystack_source"] == str(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="haystack_dir"):
        load_essay_haystack(empty)


def test_unknown_task_and_bad_options_are_explained(tokenizer):
    with pytest.raises(ValueError, match="unknown RULER task"):
        build_task("niah_single_9", tokenizer)
    with pytest.raises(ValueError, match="type_haystack"):
        build_task("niah_single_1", tokenizer, type_haystack="poems")


# ---------------------------------------------------------------- QA (local files only)


def write_squad(path):
    paragraphs = [
        {"context": f"Paragraph {i} says the river Quill{i} flows north.",
         "qas": [{"question": f"Which way does Quill{i} flow?", "is_impossible": False,
                  "answers": [{"text": "north"}]}]}
        for i in range(30)
    ]
    paragraphs[0]["qas"].append({"question": "Unanswerable?", "is_impossible": True, "answers": []})
    path.write_text(json.dumps({"data": [{"title": "Rivers", "paragraphs": paragraphs}]}))


def write_hotpot(path):
    items = [{"question": f"Who built tower {i}?", "answer": f"Builder{i}",
              "context": [[f"Tower {i}", [f"Tower {i} was built by Builder{i}. "]],
                          [f"Town {i}", [f"Town {i} has a tower. "]]]} for i in range(30)]
    path.write_text(json.dumps(items))


def test_qa_tasks_from_local_files(tmp_path, tokenizer):
    write_squad(tmp_path / "squad.json")
    write_hotpot(tmp_path / "hotpot.json")
    files = {"squad": str(tmp_path / "squad.json"), "hotpotqa": str(tmp_path / "hotpot.json")}
    length = 1024 if tokenizer.name == "gpt2" else 4096
    for name in ("qa_1", "qa_2"):
        task = build_task(name, tokenizer, qa_files=files)
        assert task.metric == "part"
        for sample in task.samples(length, 3):
            assert sample.num_prompt_tokens + sample.tokens_to_generate <= length
            assert sample.meta["num_documents"] > 3
            assert any(answer in sample.prompt for answer in sample.answers)
            assert sample.prompt.endswith(" Answer:")


def test_qa_without_files_is_skipped_with_a_message(tokenizer):
    assert "qa_files.squad" in qa_skip_reason("qa_1", None)
    assert qa_skip_reason("niah_single_1", None) is None
    with pytest.raises(ValueError, match="skipped"):
        build_task("qa_2", tokenizer)


def test_sentences_keep_their_closing_quotes_and_brackets():
    from evals.ruler.haystack import split_sentences

    assert split_sentences('He said "hi." Then (he left.) Ok') == ['He said "hi."', "Then (he left.)", "Ok"]
    assert split_sentences("One. Two!  Three? Four") == ["One.", "Two!", "Three?", "Four"]
