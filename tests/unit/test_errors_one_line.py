"""dcpo_mcore.errors.one_line, the one renderer of an exception or a text as one line of an error message,
on hand cases: which line, whitespace, the length cut, exceptions without a message, and typed=True."""
import pytest

from dcpo_mcore.errors import one_line


@pytest.mark.parametrize("what, expected", [
    (ValueError("\n  first\nsecond"), "first"),                   # the first non-empty line, stripped
    (ValueError("cannot   read\tthe  file\n  detail"), "cannot read the file"),  # whitespace collapsed
    ("{\n  \"error\": \"bad  request\"\n}", '"error": "bad request"'),  # a bare brace is not informative
    ("---\n\n===", "---"),                                          # nothing informative: the first non-blank
    (KeyError("x"), "'x'"),                                         # str() of the exception, as Python gives it
    (KeyError(), "KeyError"),                                       # no message: the type's name
    (RuntimeError("  \n\t\n"), "RuntimeError"),
    ("", ""),                                                       # a text without any: empty
    ("   \n ", ""),
])
def test_first_informative_line(what, expected):
    assert one_line(what) == expected


def test_typed_prefixes_the_type_and_never_repeats_it():
    assert one_line(OSError("disk full\nmore"), typed=True) == "OSError: disk full"
    assert one_line(KeyError(), typed=True) == "KeyError"
    assert one_line("just text", typed=True) == "just text"  # a text has no type to name


def test_cut_to_the_limit_with_an_ellipsis():
    long = "x" * 400
    assert one_line(long) == "x" * 297 + "..." and len(one_line(long)) == 300  # the default limit
    assert one_line(long, 10) == "xxxxxxx..."
    assert one_line("exactly10!", 10) == "exactly10!"                           # at the limit: untouched
    assert one_line(long, None) == long                                         # None: never cut
    assert one_line(ValueError("y" * 50), 20, typed=True) == "ValueError: " + "y" * 17 + "..."  # the message is cut
    assert one_line("a\nb" + "c" * 400, 5) == "a"                               # only the first line counts
