"""The pure-Python PTB tokenizer: by-hand PTB conventions, and PTBTokenizer itself (Java)."""

from __future__ import annotations

import shutil

import pytest

from tuwen.tasks.metrics.ptb_tokenizer import ptb_tokenize, ptb_tokenize_lines

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java not on PATH")


# Expected outputs written out by hand from the PTB conventions (and checked against
# PTBTokenizer 3.4.1): lower case, clitics split, brackets escaped and kept ("-lrb-" is not
# in pycocoevalcap's punctuation list, which has "-LRB-"), other punctuation removed.
@pytest.mark.parametrize(("caption", "expected"), [
    ("A man's dog doesn't like the cat.", "a man 's dog does n't like the cat"),
    ('"Hello," she said (quietly).', "hello she said -lrb- quietly -rrb-"),
    ("A black-and-white photo of a 1,000-year-old tree -- wow!",
     "a black-and-white photo of a 1,000-year-old tree wow"),
    ("It costs $5.50 or 3.5% at 10:30 p.m. in the U.S.",
     "it costs $ 5.50 or 3.5 % at 10:30 p.m. in the u.s."),
    ("I can't, won't; cannot gonna", "i ca n't wo n't can not gon na"),
    ("Rock 'n' roll at Mr. Smith's place, e.g. the '90s.",
     "rock 'n' roll at mr. smith 's place e.g. the '90s"),
    ("The \u201cfancy\u201d quotes \u2014 and \u2018single\u2019 ones",
     "the fancy quotes and single ones"),
    ("Two dogs; one cat: no birds? Yes!", "two dogs one cat no birds yes"),
    ("A 2-year-old's toy; the kids' toys.", "a 2-year-old 's toy the kids toys"),
    ("a dog.The cat", "a dog.the cat"),
    ("\u00bd cup of \u00a35 tea", "1/2 cup of # 5 tea"),
    ("Tab\tseparated   words", "tab separated words"),
    ("", ""),
])
def test_ptb_tokenize_by_hand(caption: str, expected: str) -> None:
    assert ptb_tokenize(caption) == expected


def test_lines_are_lexed_as_one_file() -> None:
    # PTBLexer keeps "No." whole before a digit, even across the line break.
    assert ptb_tokenize_lines(["a bus, No.", "5 dogs"]) == ["a bus no.", "5 dogs"]
    assert ptb_tokenize_lines(["a bus, No."]) == ["a bus no"]


TRICKY = [
    "A man's dog doesn't like the cat.",
    '"Hello," she said (quietly) [really] {yes}.',
    "A black-and-white photo of a 1,000-year-old tree -- wow!",
    "It costs $5.50 or 3.5% ... at 10:30 p.m. in the U.S.",
    "I can't, won't, shouldn't; y'all'd've gone. Cannot gonna wanna",
    "Rock 'n' roll at Mr. Smith's place, e.g. the '90s.",
    "The \u201cfancy\u201d quotes and \u2018single\u2019 ones \u2014 em dash \u2013 en dash.",
    "and/or AT&T &amp; a+b=c 50/50 x*y #hashtag @user",
    "email me@example.com or visit http://www.example.com/x?y=1 now",
    "It's 5 o'clock. O'Neil's. The people's choice; the peoples' choice",
    "A 2-year-old's toy; 'quoted' words and \"double\" ones",
    "...leading dots and trailing.. end... end. . .",
    "Mr. Smith and Dr. Jones met Jan. 5 at St. Paul's, etc. No. 5 and no. 6",
    "A.B. c.d.e. U.S.A. N.Y. i.e., e.g., vs. approx. no.",
    "it's. he's! I'm here. we'd've. They'll. you're. I've DON'T CANNOT",
    "1/2 3-4 5--6 -7 +8 =9 10% $10 #1 ~20 20s 1990's 90's '90s 2 1/2 cups",
    "man 's dog ' s x-ray e-mail x--y pre- post -ed hot-dog co-op 7-11",
    "hello!!! what?! wow!? ok?? no! well...i think so... a dog... a cat. . .",
    "a 4x4 truck on I-95 with 2.5kg 3:00pm 10am \u00a35 \u20ac3 \u00a27 \u00a59 US$5",
    "S\u00e3o Paulo caf\u00e9 na\u00efve \u00bd cup \u00bc",
    "dog.cat cat.a dog.5 Inc.a Jr.I won't x?y hi!there A. The end",
    "cont'd somethin' ol' 'em c'mon li'l D'Arc l'eau y'know more'n ain't",
    "a >> b << c :) ;-) :( ^_^ <b>bold</b> (555) 123-4567",
    "Some people at a Starbucks in the U.S.A.",
    "A bathroom with a toilet, sink, and shower.",
    "A woman's hand holding a cell-phone.",
    "",
    "there's a cat in the car's window",
]


@needs_java
def test_python_tokenizer_equals_ptbtokenizer_on_tricky_sentences() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    java = PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(TRICKY)})
    ours = ptb_tokenize_lines(TRICKY)
    for i, sentence in enumerate(TRICKY):
        assert ours[i] == java[i][0], sentence
