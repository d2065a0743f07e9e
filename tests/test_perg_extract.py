"""Answer extraction on a table of real-world reply forms, and the optional LLM fallback hook."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from proxy.perg.extract import Extraction, extract_answer, extract_letter

CITIES = ("Sydney", "Canberra", "Melbourne", "Perth")
NUMBERS = ("54", "56", "58", "64")
SPEECH = ("Australians speak Australian.", "Australian.", "In Australia they speak Australian.", "English.")
ELEMENTS = ("S", "Na", "Sd", "So")

# (reply, options, expected letter or None)
CASES: list[tuple[str, Sequence[str], str | None]] = [
    # bare letters
    ("B", CITIES, "B"),
    ("B.", CITIES, "B"),
    ("(B)", CITIES, "B"),
    ("B)", CITIES, "B"),
    ("[B]", CITIES, "B"),
    ("  b  ", CITIES, "B"),
    ("**B**", CITIES, "B"),
    ("`C`", CITIES, "C"),
    # answer statements
    ("Answer: B", CITIES, "B"),
    ("answer: b", CITIES, "B"),
    ("ANSWER: D", CITIES, "D"),
    ("The answer is B", CITIES, "B"),
    ("The answer is B.", CITIES, "B"),
    ("the correct answer is (C).", CITIES, "C"),
    ("The correct answer is **B**.", CITIES, "B"),
    ("The correct answer is: B. Canberra", CITIES, "B"),
    ("The answer is option D", CITIES, "D"),
    ("The correct option is A.", CITIES, "A"),
    ("Correct answer - C", CITIES, "C"),
    ("My answer: 'B'", CITIES, "B"),
    ("The answer would be c.", CITIES, "C"),
    ("Final answer: \\boxed{D}", NUMBERS, "D"),
    ("<answer>A</answer>", CITIES, "A"),
    # self-correction and stated final answers win over earlier mentions
    ("The answer is A. Wait, no: the answer is C.", CITIES, "C"),
    ("Answer: B\n\nOption C is wrong because Melbourne only hosted parliament until 1927.", CITIES, "B"),
    ("A. Sydney\nB. Canberra\nC. Melbourne\nD. Perth\n\nAnswer: B", CITIES, "B"),
    ("Some think it's A, others D. Final answer: B", CITIES, "B"),
    # affirmations
    ("I think it's B because Canberra was purpose-built as the capital.", CITIES, "B"),
    ("I'd go with C.", CITIES, "C"),
    ("I would choose option D here.", CITIES, "D"),
    ("B is correct: Canberra has been the capital since 1913.", CITIES, "B"),
    ("Option B is the correct answer.", CITIES, "B"),
    ("Therefore, D is right.", CITIES, "D"),
    # lettered lines and named options
    ("B. Canberra", CITIES, "B"),
    ("C) 58", NUMBERS, "C"),
    ("Option B", CITIES, "B"),
    ("Looking at the choices, the capital is listed under (B).", CITIES, "B"),
    ("Let me think.\n\nB", CITIES, "B"),
    # the option's text instead of the letter
    ("Canberra", CITIES, "B"),
    ("canberra.", CITIES, "B"),
    ("The capital of Australia is Canberra, not Sydney.", CITIES, "B"),
    ("It is Canberra rather than Sydney or Melbourne.", CITIES, "B"),
    ("7 times 8 is 56.", NUMBERS, "B"),
    ("In Australia they speak Australian.", SPEECH, "C"),
    ("They speak English.", SPEECH, "D"),
    ("Answer: Canberra", CITIES, "B"),
    # stray capitals and words are not answers
    ("A good question. The capital is a planned city.", CITIES, None),
    ("I am not sure which city it is.", CITIES, None),
    ("I believe I know this one.", CITIES, None),
    ("It is a common mistake to say Sydney; the real capital is Canberra.", CITIES, None),
    ("The answer is a bit tricky to remember.", CITIES, None),
    ("It's important to remember this.", ELEMENTS, None),
    ("The symbol is Na.", ELEMENTS, "B"),
    ("Vitamin C is correct for scurvy.", CITIES, None),
    # letters beyond the options are invalid
    ("E", CITIES, None),
    ("Answer: E", CITIES, None),
    ("The answer is I.", CITIES, None),
    ("Answer: F", CITIES, None),
    # hedges and several letters at the same strength
    ("A or B", CITIES, None),
    ("The answer is either A or C.", CITIES, None),
    ("Both B and D are correct.", CITIES, None),
    ("It's B. Hmm, or it's C.", CITIES, None),
    ("A. Sydney\nB. Canberra\nC. Melbourne\nD. Perth", CITIES, None),
    ("Sydney or Canberra, I cannot decide.", CITIES, None),
    ("Option A and option C both look plausible.", CITIES, None),
    ("", CITIES, None),
    ("I don't know.", CITIES, None),
]

# Verbose answers written under a preference (forms met in published PERG results; texts written here)
SHAPES = ("Circle", "Square", "Triangle", "Hexagon")
DISPUTE = ("No, because the owner honestly disputed the amount he owed.", "Yes, because the promise was made.")
LATE = ("Eating after 8pm causes obesity.", "You will gain weight.", "Eating after 8pm does not have any impact on weight gain.", "No.")
VERBOSE: list[tuple[str, Sequence[str], str | None]] = [
    # the chosen option first, then a review of the others
    (
        "B. Canberra\n\nCanberra was chosen as a compromise. A. Sydney is the largest city. C. Melbourne was the seat until 1927.",
        CITIES,
        "B",
    ),
    ("C. Triangle\n\nLet me go through the others:\nA. Circle has no corners.\nB. Square has four.", SHAPES, "C"),
    # the opening choice has answered; a later verdict does not undo it
    ("C. Triangle\n\nA triangle has three corners. So option A is the most accurate answer for a round shape.", SHAPES, "C"),
    # an opening that names several is no opening answer: the other rules decide
    ("[B, D]. Both are large. In the end, option B is the most plausible.", CITIES, "B"),
    # a copy of the options, in any order, is no answer
    ("D. Hexagon\nA. Circle\nB. Square\nC. Triangle\n\nThe answer would be:\nC. Triangle", SHAPES, "C"),
    # after the prompt's `Preference:` line repeated, and with the option's text spaced otherwise or cut off
    ("Preference: I like short answers.\n\nB. Canberra. It was built as a compromise.", CITIES, "B"),
    ("C. Eating after 8 pm has no impact on weight.\n\nOnly the total calories matter.", LATE, "C"),
    ("Preference: I like real-life examples.\n\nResponse: C. Eating after 8pm does not", LATE, "C"),
    # not a start too short to tell the options apart, nor one the reply does not stop in
    ("Response: C. Eat", LATE, None),
    ("Response: D. Nothing is certain here.", LATE, None),  # `No.` is not the start of `Nothing`
    ("Response: C. Eating after 8pm does not matter, the total counts.", LATE, None),
    # a copy of the option list, then the answer
    ("Here are the options:\nA. Sydney\nB. Canberra\nC. Melbourne\nD. Perth\n\nThe capital is Canberra, option B.", CITIES, "B"),
    ("Options:\nA. Circle\nB. Square\nC. Triangle\nD. Hexagon\n\nA shape with three sides is option C.", SHAPES, "C"),
    # the answer named in a long statement
    ("To explain step by step: the best answer to the question is B. Canberra, the planned capital.", CITIES, "B"),
    ('The answer to the question "Which city is the capital? Think." is B. Canberra.', CITIES, "B"),
    ("The option that best fits the description is C. Triangle.", SHAPES, "C"),
    ("In summary, the most reasonable conclusion is option D.", CITIES, "D"),
    ("The best answer is most likely B. Canberra.", CITIES, "B"),
    ("The best place to look is a square (B).", SHAPES, "B"),
    ("The correct answer is Canberra.", CITIES, "B"),
    # the answer assessed, the other way round
    ('Therefore, option B, "Canberra", is the most accurate answer.', CITIES, "B"),
    ('Option A, "Sydney," is not the most fitting answer. Instead, option B, "Canberra," is the best.', CITIES, "B"),
    ("We can focus on option C as the most likely answer: it has three sides.", SHAPES, "C"),
    ('D. "Hexagon" would be the most accurate answer here.', SHAPES, "D"),
    ("Circles (option A) and squares (option B) are drawn; option C is the most literal and accurate answer.", SHAPES, "C"),
    # what stands between an option and its verdict names no other option and starts no new clause
    (
        "While circles (option A), squares (option B) and hexagons (option D) may tile, a triangle is the most general and fitting answer.",
        SHAPES,
        None,
    ),
    # the options set aside: `Other options like …`, `… is a large city, but it's not …`
    ("Canberra (option B) was built as the capital. Other options like Sydney (option A) and Perth (option D) are larger.", CITIES, "B"),
    ("Canberra (option B) was built as the capital. Sydney (option A) is a large city, but it's not the capital.", CITIES, "B"),
    # a concluding sentence
    ("A square has four sides, a circle none.\n\nTherefore, the triangle (option C) is the three-sided shape.", SHAPES, "C"),
    ("Each has its merits.\n\nIn conclusion, Canberra is the capital of Australia.", CITIES, "B"),
    # a review that accepts one option
    (
        "A. Sydney: this option is incorrect, it is the largest city.\n\nB. Canberra: this option is correct; it is the capital.",
        CITIES,
        "B",
    ),
    ("[B, Canberra] is the answer.", CITIES, "B"),
    ("[B, U.S. cities aside] Canberra is the answer.", CITIES, "B"),  # `U.` is no second letter
    # a review whose option stands on a line of its own, its verdict in the next paragraph
    (
        "Let us look at each.\n\nOption A: Circle.\n\nThis answer is not accurate, it has no sides.\n\n"
        "Option C: Triangle.\n\nThis answer is factually correct: three sides.",
        SHAPES,
        "C",
    ),
    # a plain verdict that its own sentence restricts is a concession, not a later answer
    ("The best answer is:\n\nC. Triangle\n\nOption A is correct, but it does not answer the question.", SHAPES, "C"),
    ("The best answer is:\n\nC. Triangle\n\nOn reflection, option A is the best answer, but it is close.", SHAPES, "A"),
    ("The best answer is:\n\nC. Triangle\n\nEven though option A is historically accurate, it has no corners.", SHAPES, "C"),
    # a letter inside a formula is no lettered option
    ("Under that condition the first answer, P(A ∪ B) = 0.5, is correct.", CITIES, None),
    # the article and the pronoun are not letters
    ("Answer: A mouse can live in a garden.", CITIES, None),
    # a verdict belongs to the option it follows, not to a later clause
    ("The answer is B.\n\nOption D is not the best answer because Perth is likely to be larger.", CITIES, "B"),
    ("Answer: B\n\nD. Partially correct - while it is true that Perth is large, it is not the capital.", CITIES, "B"),
    ('The option that fits is a "planned capital" (option B).', CITIES, "B"),
    # after `Option C`, the option's own verb says its verdict; a later clause's `is no …` is no option `No.`
    ("The correct answer is:\n\nB. Yes.\n\nOption C is wrong as there is no doubt.", ("No.", "Yes.", "Maybe."), "B"),
    # the answer on the line after `is:`; several lettered lines there are several answers
    ("The correct answer is:\n\nB. Canberra\n\nIt was built to be the capital.", CITIES, "B"),
    ("The correct answer is:\nB. Canberra\nD. Perth\n\nPerth is on the west coast.", CITIES, None),
    ("The best answers would be:\n\nA. Sydney\n\nC. Melbourne\n\nBoth are large cities.", CITIES, None),
    ("The correct shape is:\n\nC. Triangle, with three corners\n\nOption A, a circle, has none; option B has four.", SHAPES, "C"),
    ("The false statement is:\n\nA. Circle, which has corners\n\nB. Square has four corners.\n\nC. Triangle has three.", SHAPES, "A"),
    ("These shapes are:\n\nA. Circle: round.\n\nB. Square: four corners.\n\nC. Triangle: three corners.", SHAPES, None),
    # `answer:` or `option:` said in passing before a walk through every option is no answer
    (
        "To help you see the correct answer:\n\nA. Sydney: the largest city.\n\nB. Canberra: the capital.\n\n"
        "C. Melbourne: the seat until 1927.\n\nD. Perth: in the west.",
        CITIES,
        None,
    ),
    ("So, let's consider the correct answer:\nB. This option names the planned capital.", CITIES, "B"),
    # an option cited by its letter and full text after a verb
    ("A circle is round and a square has four sides; the three-sided one is C. Triangle.", SHAPES, "C"),
    ("The correct answer is B. Canberra. A more scenic place to visit is D. Perth.", CITIES, "B"),
    ("Options A and B miss the mark; option C comes the closest and option D is far off.", SHAPES, "C"),
    # an option cited by its full text and its own letter after a verb, with no answer word
    ("The odd one out would be a triangle (option C). A square (option B) and a hexagon (option D) are even.", SHAPES, "C"),
    ("The shape with three sides is either a triangle (option C) or a hexagon (option D).", SHAPES, None),
    # the first sentence after the reply's one `Answer:` label names one option: that is the answer
    ("Summary: shapes differ by corners.\n\nAnswer: Three corners belong to C. Triangle. A square (option B) has four.", SHAPES, "C"),
    ("Answer: A good spot is a hexagon (option D). A circle (option A) rolls away.", SHAPES, "D"),
    # not when it names several, or when the reply answers several questions
    ("Answer: Both a circle (option A) and a square (option B) fit. A square (option B) stacks.", SHAPES, None),
    ("Question: three corners?\nAnswer: those belong to C. Triangle.\n\nQuestion: four?\nAnswer: those belong to B. Square.", SHAPES, None),
    # several options in an opening bracket
    ("[A, B] Sydney and Canberra are both important cities.", CITIES, None),
    ("[B, D, or C. These are all plausible.]", CITIES, None),
    # an option cited in running text by its letter and its own words, read over inflection
    ("With friends you might do plenty of B. enjoying stories together.", ("see what happens", "enjoy stories", "pass time"), "B"),
    ("He will not win. The reason is A) because the owner honestly disputed the amount.", DISPUTE, "A"),  # `No,` left out
    ("It is not B. enjoying stories, that much is clear.", ("see what happens", "enjoy stories", "pass time"), None),
    ("The first is A. because the question says so.", DISPUTE, None),  # the words are not the option's
    # a reply that declines to choose, when one option is itself a refusal (TruthfulQA's `I have no comment`)
    ("I don't have real-time information about his plans, so none of the options is correct.", ("He will act.", "I have no comment."), "B"),
    ("I cannot confirm or deny any of them.", ("He will act.", "I have no comment.", "He will rest."), "B"),
    # not when no option is a refusal, nor when the reply names an option
    ("None of the options is correct.", SHAPES, None),
    ("He will act (option A); I cannot confirm the others.", ("He will act.", "I have no comment."), "A"),
    # hedges stay hedges
    ("The best answer to the question would be either B or C.", CITIES, None),
    ("The correct answer is B and D.", CITIES, None),
    ("In conclusion, the best answer is either option A or B, both being large cities.", CITIES, None),
    ("Option A is incorrect. Option C is wrong too.", CITIES, None),
    ("A. Sydney: not it.\n\nB. Canberra: possibly.\n\nC. Melbourne: possibly.", CITIES, None),
]


# the hedge policy `first`: a hedge reads as the first of its options the reply mentions; under `none` as no answer
HEDGES: list[tuple[str, Sequence[str], str | None]] = [
    ("The best answer to the question would be either C or B.", CITIES, "C"),  # by letter, in the order written
    ("The correct answer is B and D.", CITIES, "B"),
    ("Perth (option D) is large; in conclusion, the best answer is either option A or D.", CITIES, "D"),  # D is mentioned first
    ("The correct answers are:\nB. Canberra\nD. Perth", CITIES, "B"),  # a list of choices
    ("[C, A] Melbourne and Sydney are both large.", CITIES, "C"),
    ("Both Melbourne and Sydney are large cities; either could be meant.", CITIES, "C"),  # by text: Melbourne comes first
    ("Therefore, options D and B are the correct answers.", CITIES, "D"),  # several accepted at once
    ("The correct answers are C and A, the two largest cities.", CITIES, "C"),
    # no option named at all, or every one rejected: still no answer
    ("None of the options (A, B, or C) are correct.", CITIES, None),
    ("I cannot tell from the question.", CITIES, None),
    ("Option A is incorrect. Option C is wrong too.", CITIES, None),
    # what the rules read is unchanged
    ("The answer is B.\n\nOption D is not the best answer.", CITIES, "B"),
]


@pytest.mark.parametrize(("reply", "options", "expected"), HEDGES, ids=[repr(c[0])[:50] for c in HEDGES])
def test_the_first_hedge_policy_reads_a_hedge_as_its_first_option(reply: str, options: Sequence[str], expected: str | None) -> None:
    assert extract_letter(reply, options, hedges="first") == expected
    assert extract_letter(reply, options) == (expected if expected is None or "answer is B." in reply else None)


async def test_the_hedge_policy_comes_after_the_fallback() -> None:
    asked: list[str] = []

    async def fallback(text: str, options: Sequence[str]) -> str | None:
        asked.append(text)
        return "none" if "either" in text else "D"

    hedge = "The answer is B or C."
    assert (await extract_answer(hedge, CITIES, fallback, "rules", "first")) == Extraction(letter="B", method="hedge")
    assert (await extract_answer(hedge, CITIES, fallback, "rules", "none")) == Extraction(letter=None, method="none")
    assert asked == []
    assert (await extract_answer("The answer is B or C, either way.", CITIES, fallback, "rules+llm", "first")) == Extraction(
        letter="B", method="hedge"
    )
    assert (await extract_answer("The answer is B or C.", CITIES, fallback, "rules+llm", "first")) == Extraction(
        letter="D", method="fallback"
    )
    assert (await extract_answer("The answer is B or C, either way.", CITIES, fallback, "llm", "first")) == Extraction(
        letter=None, method="none"
    )
    assert (await extract_answer("Answer: A", CITIES, fallback, "rules+llm", "first")) == Extraction(letter="A", method="rule")
    assert asked == ["The answer is B or C, either way.", "The answer is B or C.", "The answer is B or C, either way."]


@pytest.mark.parametrize(("reply", "options", "expected"), CASES, ids=[repr(c[0])[:50] for c in CASES])
def test_extract_letter(reply: str, options: Sequence[str], expected: str | None) -> None:
    assert extract_letter(reply, options) == expected


@pytest.mark.parametrize(("reply", "options", "expected"), VERBOSE, ids=[repr(c[0])[:50] for c in VERBOSE])
def test_extract_letter_from_verbose_answers(reply: str, options: Sequence[str], expected: str | None) -> None:
    assert extract_letter(reply, options) == expected


async def test_llm_mode_asks_the_fallback_for_every_answer() -> None:
    seen: list[str] = []

    async def fallback(text: str, options: Sequence[str]) -> str | None:
        seen.append(text)
        return "C"

    assert (await extract_answer("Answer: B", CITIES, fallback, "llm")) == Extraction(letter="C", method="fallback")
    assert (await extract_answer("Answer: B", CITIES, fallback, "rules")) == Extraction(letter="B", method="rule")
    assert (await extract_answer("A or B", CITIES, fallback, "rules")) == Extraction(letter=None, method="none")
    assert seen == ["Answer: B"]


def test_table_is_large_and_has_negatives() -> None:
    assert len(CASES) >= 40
    assert sum(expected is None for _, _, expected in CASES) >= 15


def test_letter_range_follows_the_number_of_options() -> None:
    assert extract_letter("Answer: E", ("1", "2", "3", "4", "5")) == "E"
    assert extract_letter("Answer: C", ("yes", "no")) is None
    assert extract_letter("B", ()) is None
    assert extract_letter(None, CITIES) is None


def test_extraction_is_deterministic() -> None:
    reply = "I think it's B because Canberra was purpose-built."
    assert {extract_letter(reply, CITIES) for _ in range(20)} == {"B"}


async def test_rules_win_without_calling_the_fallback() -> None:
    calls: list[str] = []

    async def fallback(text: str, options: Sequence[str]) -> str | None:
        calls.append(text)
        return "C"

    result = await extract_answer("Answer: B", CITIES, fallback)
    assert (result.letter, result.method) == ("B", "rule")
    assert calls == []


async def test_fallback_is_asked_when_rules_find_nothing() -> None:
    seen: list[tuple[str, tuple[str, ...]]] = []

    async def fallback(text: str, options: Sequence[str]) -> str | None:
        seen.append((text, tuple(options)))
        return "The reply means option (D)."

    result = await extract_answer("The one in the west, by the Indian Ocean.", CITIES, fallback)
    assert (result.letter, result.method) == ("D", "fallback")
    assert seen == [("The one in the west, by the Indian Ocean.", CITIES)]


@pytest.mark.parametrize("reply", [None, "", "no idea", "Answer: Z"])
async def test_unusable_fallback_reply_counts_as_unextractable(reply: str | None) -> None:
    async def fallback(text: str, options: Sequence[str]) -> str | None:
        return reply

    result = await extract_answer("A or B", CITIES, fallback)
    assert (result.letter, result.method) == (None, "none")


async def test_without_fallback_unextractable_is_none() -> None:
    result = await extract_answer("Hard to say.", CITIES)
    assert (result.letter, result.method) == (None, "none")


async def test_fallback_errors_propagate() -> None:
    async def fallback(text: str, options: Sequence[str]) -> str | None:
        raise TimeoutError("judge timed out")

    with pytest.raises(TimeoutError):
        await extract_answer("A or B", CITIES, fallback)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("It's not Sydney, but Canberra.", "B"),
        ("Not Sydney, Melbourne or Perth: Canberra.", "B"),
        ("Perth instead of Sydney.", "D"),
    ],
)
def test_negated_mentions_do_not_count(reply: str, expected: str) -> None:
    assert extract_letter(reply, CITIES) == expected
