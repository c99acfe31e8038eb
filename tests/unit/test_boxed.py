"""\\boxed{} extraction on a table of tricky inputs, and numeric answer matching."""
import pytest

from qcheck.measure.boxed import BoxedAnswer, BoxStatus, answers_match, extract_boxed, normalize_number

OK, EMPTY, MISSING, MALFORMED = BoxStatus.OK, BoxStatus.EMPTY, BoxStatus.MISSING, BoxStatus.MALFORMED

TABLE = [
    # (output, status, answer)
    (r"The final answer is \boxed{72}.", OK, "72"),
    (r"\boxed{1} then corrected: \boxed{2}", OK, "2"),                       # the last box wins
    (r"\boxed{\frac{1}{2}}", OK, r"\frac{1}{2}"),                            # nested braces
    (r"\boxed{\text{a {b} c}} done", OK, r"\text{a {b} c}"),                 # deeper nesting
    (r"\boxed{\{1, 2\}}", OK, r"\{1, 2\}"),                                   # escaped braces do not count
    (r"\boxed{ 18 }", OK, "18"),                                              # surrounding spaces stripped
    (r"\boxed {42}", OK, "42"),                                               # space before the group
    (r"so \boxed 7 is it", OK, "7"),                                          # brace-less \boxed
    (r"\fbox{3}", OK, "3"),                                                   # \fbox fallback
    (r"\fbox{3} and \boxed{4}", OK, "4"),                                     # \boxed preferred over \fbox
    (r"\boxed{5} and later \fbox{6}", OK, "5"),                               # \fbox used only without \boxed
    (r"$\boxed{-3.5}$", OK, "-3.5"),
    (r"\boxed{12", MALFORMED, None),                                          # unclosed: cut by the budget
    (r"\boxed{\frac{1}{2}", MALFORMED, None),                                 # unclosed with nesting
    (r"\boxed{3} but finally \boxed{", MALFORMED, None),                      # the last box is unclosed
    (r"\boxed{}", MALFORMED, None),                                           # empty box
    (r"\boxed{   }", MALFORMED, None),
    (r"answer: \boxed", MALFORMED, None),                                     # command without a group
    (r"\boxedfoo{3}", MISSING, None),                                         # another command's prefix
    ("The answer is 72.", MISSING, None),
    ("boxed{72}", MISSING, None),                                             # no backslash
    ("", EMPTY, None),
    ("   \n\t ", EMPTY, None),
    (None, EMPTY, None),
]


@pytest.mark.parametrize("text,status,answer", TABLE, ids=[repr(t[0])[:40] for t in TABLE])
def test_extraction_table(text, status, answer):
    result = extract_boxed(text)
    assert result.status == status, result.reason
    assert result.answer == answer
    assert result.ok == (status == OK)
    if status != OK:
        assert result.reason


def test_reasons_say_what_went_wrong():
    assert "unclosed" in extract_boxed(r"\boxed{12").reason
    assert "empty" in extract_boxed(r"\boxed{}").reason
    assert extract_boxed("").reason == "the output is empty"
    assert extract_boxed(r"\fbox{x").command == "fbox"


def test_answer_only_with_ok_status():
    with pytest.raises(ValueError):
        BoxedAnswer(BoxStatus.MISSING, answer="3")
    with pytest.raises(ValueError):
        BoxedAnswer(BoxStatus.OK)


@pytest.mark.parametrize("raw,norm", [("72", "72"), ("$1,000.00", "1000"), ("-3.50", "-3.5"), ("007", "7"),
                                      (r"\$18", "18"), ("+4", "4"), ("-0", "0"), ("18.", "18"),
                                      (r"\text{5}", "5"), ("x+1", None), ("", None), (None, None)])
def test_normalize_number(raw, norm):
    assert normalize_number(raw) == norm


def test_answers_match():
    assert answers_match("1,000", "1000")
    assert answers_match("18.0", "18")
    assert not answers_match("17", "18")
    assert not answers_match(None, "18")
    assert answers_match(" A ", "A")
