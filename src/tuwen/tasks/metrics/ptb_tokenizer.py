"""PTBTokenizer in pure Python, as pycocoevalcap's ``ptbtokenizer.py`` runs it.

pycocoevalcap tokenises captions with Stanford PTBTokenizer (stanford-corenlp-3.4.1,
``-preserveLines -lowerCase``) and then drops punctuation tokens; that needs Java. This module
is a longest-match lexer over the PTBLexer.flex rules that gives the same tokens without it:
:func:`ptb_tokenize_lines` returns each line as pycocoevalcap does.

The port was checked against PTBTokenizer 3.4.1 on fuzzed caption fragments (contractions,
quotes, brackets, hyphens, numbers, abbreviations, Unicode punctuation, emoticons, URLs):
after punctuation removal all lines agree except a few holding a URL or e-mail address glued
to other symbols (``<3@bob``); tests/evaluation/test_ptb_tokenizer.py compares both on tricky
sentences whenever Java is on PATH. Different on purpose: a caption holding ``\r`` or
U+2028/U+2029, which the Java tokenizer turns into a line break (misaligning every later
caption in pycocoevalcap), is read with those characters as spaces (:func:`caption_line`), and
an HTML-like ``<...>`` tag never spans two captions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

# ptbtokenizer.py drops these tokens after tokenising (note: "-LRB-" but PTBTokenizer with
# -lowerCase emits "-lrb-", so brackets survive, in pycocoevalcap as here).
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?",
                          "!", ",", ":", "-", "--", "...", ";"])

# ----------------------------------------------------------------------------------------
# Pure-Python PTBTokenizer: a longest-match lexer over the PTBLexer.flex rules (JFlex picks
# the longest match, trailing context included, and the earliest rule among equals).
# JFlex's %caseless does not reach character classes, so the whole table is compiled
# IGNORECASE and the classes that must stay case-sensitive are wrapped in (?-i:...).
# ----------------------------------------------------------------------------------------

# [:letter:]: \w minus digits and underscore, and minus the numeric symbols Python counts
# as alphanumeric (superscripts, vulgar fractions, roman numerals, circled numbers).
_LETTER = r"(?:(?![\u00B2\u00B3\u00B9\u00BC-\u00BE\u2070-\u209F\u2150-\u218F\u2460-\u24FF])[^\W\d_])"
_ALNUM = rf"(?:{_LETTER}|\d)"
_APOS = r"(?:['\u0092\u2019]|&apos;)"
_APOSX = r"(?:['\u0092\u2019\u0091\u2018\u201B]|&apos;)"
_SPLET = r"&[aeiouAEIOU](?:acute|grave|uml);"
_WORD = rf"(?:{_LETTER}|{_SPLET}|[\u00AD\u0237-\u024F\u0300-\u036F])+"
_SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
_NEWLINE = r"(?:\r\n|[\r\n\u2028\u2029\u000B\u000C\u0085])"
_SPACENL = rf"(?:{_SPACE}|{_NEWLINE})"
_SGML = r"<\/?[A-Za-z!][^>\n]*>"  # one line at most (Java: any span)
_SENTEND = rf"{_SPACENL}(?:{_SPACENL}|(?-i:[A-Z])|{_SGML})"
_DIGIT = r"\d"
_NUM = rf"{_DIGIT}*(?:[.:,\u00AD\u066B\u066C]{_DIGIT}+)+|{_DIGIT}+"
_HYPHEN = r"[-_\u058A\u2010\u2011]"
_THING_PART = rf"(?:[dDoOlL]{_APOSX}{_ALNUM})?{_ALNUM}+"
_THING = rf"{_THING_PART}(?:{_HYPHEN}{_THING_PART})*"
_THINGA = r"(?-i:[A-Z])+(?:(?:[+&]|&amp;)(?-i:[A-Z])+)+"
_THING3 = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
_ACRO = r"[A-Za-z](?:\.[A-Za-z])+|(?:Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(?:U\.K|U\.S\.S\.R)"
_HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|(?:{_ACRO})\.))+"
# Not in the 2013 PTBLexer.flex but visible in 3.4.1's output: "dog.cat", "a1.b2", "x?y",
# "hi!there" stay whole (a missing space after a sentence end), "dog.5" and "5?5" do not.
_DOTWORD = rf"{_LETTER}{_ALNUM}*(?:[.?!]{_LETTER}{_ALNUM}*)+"
_REDAUX = rf"{_APOS}(?:[msdMSD]|re|ve|ll)"
_SWORD = r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*"
_SREDAUX = rf"n{_APOSX}t"
_APOWORD = "|".join([
    rf"{_APOS}n{_APOS}?", rf"[lLdDjJ]{_APOS}", rf"Dunkin{_APOS}", rf"somethin{_APOS}",
    rf"ol{_APOS}", rf"{_APOS}em", rf"(?-i:[A-HJ-XZn]){_APOSX}{_LETTER}{{2}}{_LETTER}*",
    rf"{_APOS}[2-9]0s", rf"{_APOS}till?",
    rf"{_LETTER}+[aeiouyAEIOUY]{_APOSX}(?-i:[aeiouA-Z]){_LETTER}*", rf"{_APOS}cause",
    r"cont'd\.?", "'twas", "nor'easter", "c'mon", "e'er", "s'mores", "ev'ry", "li'l", "nat'l",
])
_FULLURL = r"https?:\/\/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-]"
_LIKELYURL = (r"(?:(?:www\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})|"
              # ",-_" is a range (0x2C-0x5F: digits, capitals, :;<=>?@[\]^) in the flex
              # source too, and case-sensitive there, so this branch takes lower-case hosts.
              r"(?:(?:(?-i:[^ \t\n\f\r\"`'<>|.!?(){},-_$])+\.)+(?:com|net|org|edu)))"
              r"(?:\/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?")
_EMAIL = (r"[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0]*@(?:[^ \t\n\f\r\"<>|().\u00A0]+\.)*"
          r"[^ \t\n\f\r\"<>|().\u00A0]+")
# In 3.4.1's output a Western smiley never runs into a word (":dog", "=D2" split), an
# Asian one may ("^_^a" is "^_^" "a").
_EMOTICON = (r"(?-i:[<>]?[:;=][\-o\*']?[\(\)DPdpO\\{@\|\[\]])(?![A-Za-z0-9])|"
             r"(?-i:[\-\^x=~<>']_[\-\^x=~<>']|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)|"
             r"\([\^x=~<>']-[\^x=~<>'`]\))")
_ABMONTH = "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
_ABDAYS = "Mon|Tue|Tues|Wed|Thu|Thurs|Fri"
_ABSTATE = ("Ala|Ariz|(?-i:A)rk|Calif|Colo|Conn|Dak|Del|Fla|Ga|(?-i:I)ll|Ind|Kans?|Ky|La|"
            "(?-i:M)ass|Md|Mich|Minn|(?-i:M)iss|Mo|Mont|Neb|Nev|Okla|(?-i:O)re|Pa|Penn|Tenn|"
            "Tex|Va|Vt|(?-i:W)ash|Wisc?|Wyo")
_ABTITLE = ("Mr|Mrs|Ms|(?-i:M)iss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|"
            "Adm|Rev|Maj|Sgt|Cpl|Pvt|Mt|Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|"
            "Supts?|Det")
_ABPTIT = r"Jr|Sr|Bros|(?:Ed|Ph)\.D|Blvd|Rd|Esq"
_ABCOMP = "Inc|Cos?|Corp|Pp?tys?|Ltd|Plc|Bancorp|Dept|Bhd|Assn|Univ|Intl|Sys"
_ABCOMP2 = "Invt|Elec|Natl|M[ft]g"
_ABNUM = "tel|est|ext|sq|ft"
_ABBREV1 = rf"(?:{_ABMONTH}|{_ABDAYS}|{_ABSTATE}|{_ABCOMP}|{_ABNUM}|{_ABPTIT}|etc|al|seq)\."
_ABBREV4 = rf"[A-Za-z]|{_ABTITLE}|vs|Alex|Wm|Jos|Cie|a\.k\.a|cf|TREAS|{_ACRO}|{_ABCOMP2}"
_SENTENCE_OPENERS = (
    "About", "According", "Additionally", "After", "An", "A", "As", "At", "But", "Earlier", "He",
    "Her", "Here", "However", "If", "In", "It", "Last", "Many", "More", r"Mr\.", r"Ms\.", "Now",
    "Once", "One", "Other", "Our", "She", "Since", "So", "Some", "Such", "That", "The", "Then",
    "There", "These", "They", "This", "We", "When", "While", "What", "Yet", "You",
)
# Only the capital is case-sensitive ([A]bout in the flex source).
_ACRONYM_NEXT = "|".join(f"(?-i:{w[0]}){w[1:]}" for w in _SENTENCE_OPENERS)
_TBSPEC = (r"-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S(?:&|&amp;)P-500|"
           rf"S(?:&|&amp;)Ls|Cap{_APOS}n|c{_APOS}est")
_PHONE = r"(?:\([0-9]{3}\)[ \u00A0]?|[0-9]{3}[\- \u00A0.])[0-9]{3}[\- \u00A0.][0-9]{4}"
_LDOTS = r"\.{3,}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]"
_QUOTES = (rf"''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F"
           rf"\u2039\u203A\u00AB\u00BB]{{1,2}}|{_APOS}")
_DOLSIGN2 = "[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]"
_MISCSYMBOL = ("[\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00BA\u00D7\u00F7\u2020-\u2023"
               "\u2032-\u2038\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF"
               "\u2200-\u22FF\u2300-\u23FF\u2600-\u26FF\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40"
               "\uFF5B-\uFF65]")


def _split_top_level(pattern: str) -> list[str]:
    """The alternatives of a regex at nesting depth 0 (``a|(b|c)`` -> ``a``, ``(b|c)``)."""
    parts, depth, start, i, in_class = [], 0, 0, 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "]" or pattern[i + 1:i + 3] == "^]":
                i += 2 if pattern[i + 1] == "]" else 3
                continue
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
        i += 1
    parts.append(pattern[start:])
    return parts


def _latex_quote(tok: str, left: bool) -> str:
    out = re.sub(r"&apos;|'", "`" if left else "'", tok)
    out = re.sub(r'"|&quot;', "``" if left else "''", out)
    out = re.sub("[\u0091\u2018\u201B\u2039]", "`", out)
    out = re.sub("[\u0092\u2019\u203A]", "'", out)
    out = re.sub("[\u0093\u201C\u00AB]", "``", out)
    return re.sub("[\u0094\u201D\u00BB]", "''", out)


def _currency(tok: str) -> str:
    tok = tok.replace("\u00A2", "cents").replace("\u00A3", "#")
    return re.sub("[\u0080\u00A4\u20A0\u20AC]", "$", tok)


_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3",
              "\u2154": "2/3"}
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-",
             "}": "-RCB-"}

# An action maps the matched token text to (emitted text or None to drop, chars consumed);
# consuming less than the match is JFlex's yypushback.
_Action = Callable[[str], tuple[str | None, int]]


def _keep(tok: str) -> tuple[str | None, int]:
    return tok, len(tok)


def _emit(text: str) -> _Action:
    return lambda tok: (text, len(tok))


def _emit_with(fn: Callable[[str], str]) -> _Action:
    return lambda tok: (fn(tok), len(tok))


def _pushback(n: int) -> _Action:
    return lambda tok: (tok[:len(tok) - n], len(tok) - n)


def _keep_pushback_period(tok: str) -> tuple[str | None, int]:
    # Non-strict PTB3: emit "U.S." and lex its period again as a sentence end.
    return tok, len(tok) - 1


def _hyphens(tok: str) -> tuple[str | None, int]:
    return ("--" if 3 <= len(tok) <= 4 else tok), len(tok)


def _amp(tok: str) -> str:
    return re.sub(r"(?i)&amp;", "&", tok)


# (token regex, trailing-context regex or None, action), in PTBLexer.flex rule order, with
# the rules that 3.4.1's output shows beyond the 2013 flex source put where they act.
_RULES: list[tuple[str, str | None, _Action]] = [
    (r"cannot", None, _pushback(3)),
    (r"gimme|gonna|gotta|lemme|wanna", None, _pushback(2)),
    (r"'tis|'twas", None, lambda tok: (tok[:2], 2)),
    (_SGML, None, _emit_with(lambda t: t.replace(" ", "\u00A0"))),
    (r"&(?:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", None, _emit("--")),
    (r"&amp;", None, _emit("&")),
    (r"&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);", None, _keep),
    (_WORD, _REDAUX, _keep),
    (_SWORD, _SREDAUX, _keep),
    (_WORD, None, _keep),
    (_DOTWORD, _REDAUX, _keep),
    (_DOTWORD, None, _keep),
    (_APOWORD, None, _keep),
    (r"y" + _APOS, _LETTER, _keep),
    (_FULLURL, None, _keep),
    (_LIKELYURL, None, _keep),
    (_EMAIL, None, _keep),
    (r"@[a-zA-Z_][a-zA-Z_0-9]*|#" + _WORD, None, _keep),
    (_EMOTICON, None, _emit_with(lambda t: t.replace("(", "-LRB-").replace(")", "-RRB-"))),
    (_REDAUX, r"[^A-Za-z]", _emit_with(lambda t: _latex_quote(t, False))),
    (_SREDAUX, None, _emit_with(lambda t: _latex_quote(t, False))),
    (rf"{_DIGIT}{{1,2}}[\-\/]{_DIGIT}{{1,2}}[\-\/]{_DIGIT}{{2,4}}", None, _keep),
    (rf"[\-+]?(?:{_NUM})", None, _keep),
    (rf"(?:{_DIGIT}{{1,4}}[- \u00A0])?{_DIGIT}{{1,4}}(?:\\?\/|\u2044){_DIGIT}{{1,4}}", None,
     _emit_with(lambda t: t.replace(" ", "\u00A0"))),
    ("[\u00BC\u00BD\u00BE\u2153\u2154]", None, _emit_with(lambda t: _FRACTIONS[t])),
    (_TBSPEC, None, _emit_with(_amp)),
    (_THING3, None, _keep),
    (r"(?-i:[A-Z])*\$|#", None, _keep),
    (_DOLSIGN2, None, _emit_with(_currency)),
    (rf"(?:{_ACRO})\.", rf"{_SPACE}+(?:{_ACRONYM_NEXT}){_SPACENL}", _keep_pushback_period),
    # 3.4.1 output: an initial before a sentence opener ends the sentence ("A. The" -> A .).
    (r"[A-Za-z]\.", rf"{_SPACE}+(?:{_ACRONYM_NEXT}){_SPACENL}", _pushback(1)),
    (_ABBREV1, _SENTEND, _keep_pushback_period),
    (_ABBREV1, r"[\s\S]{2}", _keep),  # so "Inc.a" is "Inc." "a", not one dotted word
    (_ABBREV1, None, _keep),
    (r"Nos?\.", rf"{_SPACENL}?{_DIGIT}", _keep),  # "No. 5" (3.4.1 output; "no." alone splits)
    ("|".join(rf"(?:{alt})\." for alt in _split_top_level(_ABBREV4)), None, _keep),
    (_ABBREV4, _SPACE, _keep),
    (_ACRO, _SPACENL, _keep),
    (r"'[0-9][0-9]", _SPACENL, _keep),
    (rf"{_WORD}\.", r"[,;:]", _keep),
    (_PHONE, None, _emit_with(lambda t: t.replace(" ", "\u00A0").replace("(", "-LRB-")
                              .replace(")", "-RRB-"))),
    (r'"|&quot;', r"[A-Za-z0-9$]", _emit_with(lambda t: _latex_quote(t, True))),
    (r'"|&quot;', None, _emit_with(lambda t: _latex_quote(t, False))),
    (r"\+", None, _keep),
    ("[%&\u2030\u2031]", None, _keep),
    (r"~|\^", None, _keep),
    (r"\||\\", None, _keep),
    (r"<<|>>", None, _keep),
    (r"[<>\[\]{}()]|&lt;|&gt;", None, _emit_with(lambda t: _BRACKETS.get(t, t))),
    (r"-+", None, _hyphens),
    (_LDOTS, None, _emit("...")),
    (r"@+|#+|_+", None, _keep),
    (r"\*+|(?:\\\*){1,3}", None, _keep),
    (r"[,;:]", None, _keep),
    (r"[?!]+", None, _keep),
    ("[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA]", None, _keep),
    (r"=", None, _keep),
    (r"\/", None, _keep),
    (_HTHING + r"\.", r"[,;:]", _keep),
    (_HTHING, None, _keep),
    (_THING + r"\.", r"[,;:]", _keep),
    (_THING, None, _keep),
    (_THINGA + r"\.", r"[,;:]", _emit_with(_amp)),
    (_THINGA, None, _emit_with(_amp)),
    (r"'", r"[A-Za-z][^ \t\n\r\u00A0]", _emit_with(lambda t: _latex_quote(t, True))),
    (_REDAUX, None, _emit_with(lambda t: _latex_quote(t, False))),
    (_QUOTES, None, _emit_with(lambda t: _latex_quote(t, False))),
    (_MISCSYMBOL, None, _keep),
]


def _compile_rules() -> list[tuple[list[re.Pattern[str]], _Action]]:
    compiled = []
    for token, context, action in _RULES:
        # Top-level alternatives become separate candidates so that each is tried for the
        # longest match (Python's | takes the first alternative that fits, JFlex the longest).
        alternatives = _split_top_level(token)
        suffix = f"(?=(?P<ctx>{context}))" if context else ""
        compiled.append(([re.compile(f"(?:{alt}){suffix}", re.IGNORECASE)
                          for alt in alternatives], action))
    return compiled


_COMPILED = _compile_rules()
_SKIP = re.compile(rf"(?:{_SPACE}|\n|[\x00\u200B\u200E\u200F\uFEFF]|&nbsp;)+")
_PLAIN_WORD = re.compile(rf"[A-Za-z]+(?={_SPACE}|\n|$)")
_ASSIMILATIONS = frozenset({"cannot", "gimme", "gonna", "gotta", "lemme", "wanna"})
# Line breaks other than "\n" would make the Java tokenizer emit extra lines (and then
# pycocoevalcap pairs every later caption with the wrong image), so they become spaces.
_OTHER_BREAKS = re.compile("\r\n?|[\u2028\u2029\u000B\u000C]")


def caption_line(caption: str) -> str:
    """A caption made safe for one line of the tokenizer's input file."""
    return _OTHER_BREAKS.sub(" ", caption.replace("\n", " "))


def _longest_match(text: str, pos: int) -> tuple[str | None, int]:
    best_len, best = 0, None
    for patterns, action in _COMPILED:
        for pattern in patterns:
            m = pattern.match(text, pos)
            if m is None or m.end() == pos:
                continue
            length = m.end() - pos + len(m.groupdict().get("ctx") or "")
            if length > best_len:
                best_len, best = length, (m.group(0), action)
    if best is None:  # untokenizable character: PTBTokenizer deletes it by default
        return None, 1
    token, action = best
    return action(token)


def ptb_tokenize_words(lines: Sequence[str]) -> list[list[str]]:
    """PTBTokenizer (-preserveLines) tokens of each line, before lower-casing and
    punctuation removal, for ``lines`` written to one file as pycocoevalcap does.

    Lexing the lines as one text matters: a few rules look past the end of a line (``no.``
    stays whole when the next line starts with a digit), as in the Java tokenizer.
    """
    text = "\n".join(caption_line(line) for line in lines)
    out: list[list[str]] = [[] for _ in lines]
    row, pos, end = 0, 0, len(text)
    while pos < end:
        skip = _SKIP.match(text, pos)
        if skip:
            row += skip.group(0).count("\n")
            pos = skip.end()
            continue
        plain = _PLAIN_WORD.match(text, pos)
        if plain and plain.group(0).lower() not in _ASSIMILATIONS:
            # A bare run of letters followed by a space: every rule yields the run itself.
            out[row].append(plain.group(0))
            pos = plain.end()
            continue
        token, consumed = _longest_match(text, pos)
        if token is not None:
            out[row].append(token.replace("\u00AD", ""))
        pos += consumed
    return out


def ptb_tokenize_lines(lines: Sequence[str]) -> list[str]:
    """``lines`` as pycocoevalcap's PTBTokenizer returns them: PTB tokens, lower-cased,
    punctuation tokens removed, joined by single spaces."""
    return [" ".join(w for w in (t.lower() for t in tokens) if w not in PUNCTUATIONS)
            for tokens in ptb_tokenize_words(lines)]


def ptb_tokenize(caption: str) -> str:
    """One caption tokenised on its own (see :func:`ptb_tokenize_lines`)."""
    return ptb_tokenize_lines([caption])[0]
