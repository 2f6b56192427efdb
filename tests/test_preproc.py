"""The config preprocessor and lexer (kamflat/preproc.py): table-driven.

Each case is config text in and the tokens (kind, value) out, or the exact
`FILE:LINE: message` of the error.
"""
import pytest
from hypothesis import given, settings, strategies as st

from kamflat.config.preproc import ConfigError, preprocess


def scan(text, defines=(), path="t.cfg"):
    return [(t.kind, t.value) for t in preprocess(text, path, defines).tokens]


def ids(*names):
    return [("id", n) for n in names]


# (case id, config text, -A defines, expected tokens)
TOKEN_CASES = [
    # --- define / def / trydef / trydefine / redef / redefine ---
    ("define", "#!define X 5\nX", (), [("num", 5)]),
    ("def", '#!def X "a"\nX', (), [("str", "a")]),
    ("bang-bang prefix", "!!define X 7\nX", (), [("num", 7)]),
    ("indented directive", "   \t#!define X 7\nX", (), [("num", 7)]),
    ("directive after code", "a #!define X 7\nX", (), [("id", "a"), ("num", 7)]),
    ("trydef keeps the first", "#!define X 1\n#!trydef X 2\nX", (), [("num", 1)]),
    ("trydefine when new", "#!trydefine X 2\nX", (), [("num", 2)]),
    ("trydef keeps -A", "#!trydef X 2\nX", ("X=9",), [("num", 9)]),
    ("redef", "#!define X 1\n#!redef X 2\nX", (), [("num", 2)]),
    ("redefine new", "#!redefine X 3\nX", (), [("num", 3)]),
    ("empty define expands to nothing", "#!define E\nE x", (), ids("x")),
    ("defines nest", "#!define A B\n#!define B 3\nA", (), [("num", 3)]),
    ("no expansion in strings", '#!define X 1\n"X" \'X\'', (), [("str", "X"), ("str", "X")]),
    ("no expansion before the define", "X\n#!define X 1\nX", (), [("id", "X"), ("num", 1)]),
    ("expansion is token level", "#!define X 1\nXY X_ X", (), [("id", "XY"), ("id", "X_"),
                                                             ("num", 1)]),
    ("value is the rest of the line", '#!define U "flatstore:/a b"  \nU',
     (), [("str", "flatstore:/a b")]),
    ("value continues after backslash", "#!define X 1\\\n2\nX", (), [("num", 12)]),
    ("a comment in a value eats the rest of the line, as in Kamailio",
     "#!define X 1 # one\nX 2\n3", (), [("num", 1), ("num", 3)]),
    ("value with punctuation", "#!define L udp:127.0.0.1:5060\nL",
     (), [("id", "udp"), ("punct", ":"), ("num", 127), ("punct", "."), ("num", 0),
          ("punct", "."), ("num", 0), ("punct", "."), ("num", 1), ("punct", ":"),
          ("num", 5060)]),
    ("builtin KAMAILIO_5", "#!ifdef KAMAILIO_5\nk5\n#!endif", (), ids("k5")),
    ("builtin KAMFLAT", "#!ifndef KAMFLAT\nno\n#!else\nyes_kamflat\n#!endif", (),
     ids("yes_kamflat")),
    # --- -A ---
    ("-A name", "#!ifdef WITH_X\na\n#!else\nb\n#!endif", ("WITH_X",), ids("a")),
    ("-A name=value", "N", ("N=3",), [("num", 3)]),
    ("-A quoted value", "N", ('N="x y"',), [("str", "x y")]),
    # --- ifdef / ifndef / else / endif ---
    ("ifdef false", "#!ifdef X\na\n#!endif\nb", (), ids("b")),
    ("ifndef", "#!ifndef X\na\n#!endif\nb", (), ids("a", "b")),
    ("else", "#!ifdef X\na\n#!else\nb\n#!endif", (), ids("b")),
    ("ifndef else", "#!define X\n#!ifndef X\na\n#!else\nb\n#!endif", (), ids("b")),
    ("nested in a skipped block",
     "#!ifdef NO\n#!ifdef ALSO\nx\n#!else\ny\n#!endif\nz\n#!else\nw\n#!endif", (), ids("w")),
    ("nested active", "#!define A\n#!ifdef A\n#!ifndef B\nab\n#!endif\n#!endif", (), ids("ab")),
    ("a second else flips back", "#!ifdef X\na\n#!else\nb\n#!else\nc\n#!endif", (),
     ids("b")),
    ("skipped text is not lexed", '#!ifdef NO\n"unclosed \' /* $(x\n#!endif\nok', (), ids("ok")),
    ("directives inside comments are comments", "/*\n#!define X 1\n*/\nX", (), ids("X")),
    ("directives inside strings are text", '"#!define X 1"\nX', (),
     [("str", "#!define X 1"), ("id", "X")]),
    ("define inside an active block", "#!ifndef X\n#!define X 2\n#!endif\nX", (), [("num", 2)]),
    ("last line without newline", "#!ifdef X\na\n#!endif", (), []),
    # --- subst / substdef / substdefs ---
    # (a "string" on the next line would join the #!subst argument, as in Kamailio)
    ("subst once", '#!subst "/HOST/example.com/"\n; "sip:HOST HOST"', (),
     [("punct", ";"), ("str", "sip:example.com HOST")]),
    ("subst g", '#!subst "/HOST/example.com/g"\nx "HOST HOST"', (),
     [("id", "x"), ("str", "example.com example.com")]),
    ("subst i and a backref", '#!subst "/(a+)b/\\\\1-/i"\nx "xAAB"', (),
     [("id", "x"), ("str", "xAA-")]),
    ("subst other separator", '#!subst "|/var|/tmp|"\nx "/var/x"', (),
     [("id", "x"), ("str", "/tmp/x")]),
    ("subst only after it", '"H"\n#!subst "/H/h/"\nx "H"', (),
     [("str", "H"), ("id", "x"), ("str", "h")]),
    ("the next line's string joins the subst", '#!subst "/a/b/"\n"g" x "a a"', (),
     [("id", "x"), ("str", "b b")]),
    ("subst in raw strings", "#!subst \"/H/h/\"\n'H'", (), [("str", "h")]),
    ("subst not in names", '#!subst "/H/h/"\nH', (), ids("H")),
    ("rules apply in order", '#!subst "/a/b/"\n#!subst "/b/c/"\nx "a"', (),
     [("id", "x"), ("str", "c")]),
    ("substdef", '#!substdef "/PORT/5060/"\nPORT "x:PORT"', (), [("num", 5060),
                                                              ("str", "x:5060")]),
    ("substdefs quotes the define", '#!substdefs "/NAME/kam/"\nNAME x "NAME"', (),
     [("str", "kam"), ("id", "x"), ("str", "kam")]),
    ("a define's string joins the next string", '#!define A "a"\nA "b"', (),
     [("str", "ab")]),
    # --- strings ---
    ("escapes", r'"a\tb\n\x41\101\\\"q\r\a"', (), [("str", 'a\tb\nAA\\"q\r\a')]),
    ("unknown escapes stay", r'"\+\7\d"', (), [("str", "\\+\\7\\d")]),
    ("escaped newline in a string", '"a\\\nb"', (), [("str", "ab")]),
    ("newline in a string", '"a\nb"', (), [("str", "a\nb")]),
    ("adjacent strings join", '"a" "b"\n\t"c"', (), [("str", "abc")]),
    ("a comment stops joining", '"a" # c\n"b"', (), [("str", "a"), ("str", "b")]),
    ("raw strings do not join", "'a' 'b'", (), [("str", "a"), ("str", "b")]),
    ("raw string", "'a\\n\"b'", (), [("str", 'a\\n"b')]),
    ("empty string", '""', (), [("str", "")]),
    # --- numbers and words ---
    ("decimal", "10 0", (), [("num", 10), ("num", 0)]),
    ("hex", "0x1F 0xff", (), [("num", 31), ("num", 255)]),
    ("octal", "0660 0600", (), [("num", 432), ("num", 384)]),
    ("binary", "101b 0b", (), [("num", 5), ("num", 0)]),
    ("minus is its own token", "-5", (), [("punct", "-"), ("num", 5)]),
    ("yes and no words", "yes true on enable no false off disable", (),
     [("num", 1)] * 4 + [("num", 0)] * 4),
    ("not numbers", "08 5060abc 0x", (), [("word", "08"), ("word", "5060abc"),
                                          ("word", "0x")]),
    ("names", "a_b _x x9 yesterday", (), ids("a_b", "_x", "x9", "yesterday")),
    # --- comments ---
    ("hash comment", "a # x y\nb", (), ids("a", "b")),
    ("slash comment", "a // x\nb", (), ids("a", "b")),
    ("block comment", "a /* x\ny */ b", (), ids("a", "b")),
    ("block comments nest", "/* a /* b */ c */ d", (), ids("d")),
    ("unknown #! is a comment", "#!foo bar\na", (), ids("a")),
    # --- pseudo-variables ---
    ("pvar", "$ru $var(x) $(ru{s.select,1,}) $?", (),
     [("pvar", "$ru"), ("pvar", "$var(x)"), ("pvar", "$(ru{s.select,1,})"), ("pvar", "$?")]),
    ("pvar nested parens", "$(hdr(X)[0]) }", (), [("pvar", "$(hdr(X)[0])"), ("punct", "}")]),
    ("subst in pvars", '#!subst "/XX/yy/"\n$var(XX)', (), [("pvar", "$var(yy)")]),
    # --- compatibility line ---
    ("KAMAILIO line", "#!KAMAILIO\na", (), ids("a")),
    ("OPENSER with //", "//!OPENSER\na", (), ids("a")),
]


@pytest.mark.parametrize("text,defines,expected", [c[1:] for c in TOKEN_CASES],
                         ids=[c[0] for c in TOKEN_CASES])
def test_tokens(text, defines, expected):
    assert scan(text, defines) == expected


# (case id, config text, -A defines, expected error)
ERROR_CASES = [
    ("define twice", "#!define A 1\n#!define A 2", (),
     "t.cfg:2: A is already defined (t.cfg:1); use #!redefine to change it or #!trydef to "
     "keep the first value"),
    ("define of -A", "#!define A 1", ("A",),
     "t.cfg:1: A is already defined (-A); use #!redefine to change it or #!trydef to keep the "
     "first value"),
    ("define builtin", "\n#!define KAMAILIO_5 x", (),
     "t.cfg:2: KAMAILIO_5 is already defined (built in); use #!redefine to change it or "
     "#!trydef to keep the first value"),
    ("dash in a name", "#!define A-B 1", (),
     "t.cfg:1: '-' is not allowed in the #!define name A-..., use _"),
    ("dash in an ifdef", "#!ifdef A-B\n#!endif", (),
     "t.cfg:1: '-' is not allowed in the #!ifdef name A-..., use _"),
    ("define without a name", "\n#!define\n", (),
     "t.cfg:2: #!define needs a name: letters, digits and _, not starting with a digit"),
    ("ifdef without a name", "#!ifndef\n#!endif", (), "t.cfg:1: #!ifndef needs a define name"),
    ("unclosed ifdef", "a\n#!ifdef X\nb\n", (),
     "t.cfg:2: #!ifdef X is never closed: add #!endif after its block"),
    ("unclosed inner ifdef", "#!ifndef X\n#!ifdef Y\n#!endif\n", (),
     "t.cfg:1: #!ifndef X is never closed: add #!endif after its block"),
    ("stray endif", "a\n#!endif\n", (), "t.cfg:2: #!endif without an open #!ifdef or #!ifndef"),
    ("endif with a comment", "#!ifdef X\n#!endif # X\n", (),
     "t.cfg:2: #!endif must be alone on its line, found '# X' after it (Kamailio reads such "
     "a line as a comment); put comments on their own line"),
    ("else with text", "#!ifndef X\n#!else X\n#!endif", (),
     "t.cfg:2: #!else must be alone on its line, found 'X' after it (Kamailio reads such a "
     "line as a comment); put comments on their own line"),
    ("unsupported directive", "#!ifexp KAMAILIO_VERSION > 5\n", (),
     "t.cfg:1: " + "#!%s is not supported by kamflat (it reads every directive of Kamailio 3.3-6.0 but the "
     "expression ones: define, trydef, redef, ifdef, ifndef, else, endif, subst, substdef, "
     "substdefs, undef, tryundef, defenv, defenvs, trydefenv, trydefenvs, include_file, "
     "import_file)" % "ifexp"),
    ("unclosed string", 'a\n"abc\n', (),
     't.cfg:2: unclosed "string": no closing " before the end of the file'),
    ("unclosed raw string", "'abc", (),
     "t.cfg:1: unclosed 'string': no closing ' before the end of the file"),
    ("unclosed comment", "a\n/* x /* y */\n", (),
     "t.cfg:2: unclosed /* comment: no */ before the end of the file"),
    ("unclosed pvar", "$var(x\n)", (), "t.cfg:1: pseudo-variable $var(x has an unclosed '('"),
    ("subst without separators", '#!subst "abc"', (),
     "t.cfg:1: bad #!subst expression 'abc': no separator after the regular expression; "
     "expected \"/regex/replacement/flags\" with flags from i, g, s"),
    ("subst bad regex", '#!subst "/(/x/"', (),
     "t.cfg:1: bad #!subst expression '/(/x/': '(' is not a valid regular expression; "
     "expected \"/regex/replacement/flags\" with flags from i, g, s"),
    ("subst bad flag", '#!subst "/a/b/q"', (),
     "t.cfg:1: bad #!subst expression '/a/b/q': unknown flag 'q'; expected "
     "\"/regex/replacement/flags\" with flags from i, g, s"),
    ("subst needs a string", "#!subst X", (),
     't.cfg:1: #!subst needs a quoted "/regex/replacement/flags" on the same line'),
    ("define into itself", "#!define A B\n#!define B A\nx\nA", (),
     "t.cfg:4: #!define A expands into itself"),
    ("include needs quotes", "include_file x.cfg", (),
     "t.cfg:1: include_file needs a file name in double quotes on the same line, got 'x.cfg'"),
    ("bad -A", "", ("1X",),
     "-A 1X: a define name is letters, digits and _ and does not start with a digit"),
]


@pytest.mark.parametrize("text,defines,message", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_errors(text, defines, message):
    with pytest.raises(ConfigError) as caught:
        preprocess(text, "t.cfg", defines)
    assert str(caught.value) == message


def test_token_lines_and_line_breaks():
    text = 'a\nb "x\ny" c\\\nd\n/* 1\n2 */ e\n#!define V v1 v2\nV'
    tokens = preprocess(text, "t.cfg").tokens
    assert [(t.text, t.line, t.end_line, t.newline_before) for t in tokens] == [
        ("a", 1, 1, True), ("b", 2, 2, True), ('"x\ny"', 2, 3, False), ("c", 3, 3, False),
        ("d", 4, 4, False), ("e", 6, 6, True), ("v1", 8, 8, True), ("v2", 8, 8, False)]


def test_defines_compat_and_warnings():
    result = preprocess("#!KAMAILIO\n#!define A 1\n#!define B\n#!ifdef A trailing\n#!endif\n"
                        "#!else\n", "t.cfg", ("C=x",))
    assert result.compat == "KAMAILIO"
    assert {k: result.defines[k] for k in "ABC"} == {"A": "1", "B": "", "C": "x"}
    assert result.warnings == ["t.cfg:4: text after #!ifdef A is ignored: 'trailing'",
                               "t.cfg:6: #!else without an open #!ifdef or #!ifndef is ignored"]


# ---- include_file / import_file, with real files ---------------------------------

def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def scan_file(path, defines=()):
    return preprocess(path.read_text(), str(path), defines)


def test_include_relative_to_the_including_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main = write(tmp_path / "etc" / "main.cfg",
                 'a\ninclude_file "sub.cfg"\n#!include_file "sub2.cfg"\nd\n')
    write(tmp_path / "etc" / "sub.cfg", "#!define X 1\nb\n")
    write(tmp_path / "etc" / "sub2.cfg", "X\n")
    result = preprocess(main.read_text(), "etc/main.cfg")
    assert [(t.value, t.file, t.line) for t in result.tokens] == [
        ("a", "etc/main.cfg", 1), ("b", "etc/sub.cfg", 2), (1, "etc/sub2.cfg", 1),
        ("d", "etc/main.cfg", 4)]
    assert result.files == ["etc/main.cfg", "etc/sub.cfg", "etc/sub2.cfg"]


def test_include_tries_the_working_directory_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "sub.cfg", "from_cwd\n")
    write(tmp_path / "etc" / "sub.cfg", "from_etc\n")
    main = write(tmp_path / "etc" / "main.cfg", 'import_file "sub.cfg"\n')
    assert [t.value for t in preprocess(main.read_text(), "etc/main.cfg").tokens] == ["from_cwd"]


def test_import_file_skips_a_missing_file_include_file_does_not(tmp_path):
    main = write(tmp_path / "main.cfg", 'import_file "nope.cfg"\na\n#!import_file "no2.cfg"\n')
    assert [t.value for t in scan_file(main).tokens] == ["a"]
    main = write(tmp_path / "main.cfg", 'a\ninclude_file "nope.cfg"\n')
    with pytest.raises(ConfigError) as caught:
        scan_file(main)
    assert str(caught.value) == '%s:2: cannot open included file "nope.cfg" (tried nope.cfg ' \
        'and %s/nope.cfg)' % (main, tmp_path)


def test_include_in_a_skipped_block_is_not_read(tmp_path):
    main = write(tmp_path / "main.cfg", '#!ifdef NO\ninclude_file "nope.cfg"\n#!endif\nz\n')
    assert [t.value for t in scan_file(main).tokens] == ["z"]


def test_subst_applies_to_include_names(tmp_path):
    write(tmp_path / "real.cfg", "r\n")
    main = write(tmp_path / "main.cfg", '#!subst "/NAME/real/"\ninclude_file "NAME.cfg"\n')
    assert [t.value for t in scan_file(main).tokens] == ["r"]


def test_include_depth_limit(tmp_path):
    for i in range(10):           # main + 10 nested includes: Kamailio's limit
        write(tmp_path / ("f%d.cfg" % i), 'include_file "%s/f%d.cfg"\n' % (tmp_path, i + 1))
    write(tmp_path / "f10.cfg", "deep\n")
    assert [t.value for t in scan_file(tmp_path / "f0.cfg").tokens] == ["deep"]
    write(tmp_path / "f10.cfg", 'include_file "%s/f11.cfg"\n' % tmp_path)
    write(tmp_path / "f11.cfg", "too_deep\n")
    with pytest.raises(ConfigError) as caught:
        scan_file(tmp_path / "f0.cfg")
    assert str(caught.value) == ('%s/f10.cfg:1: include_file "%s/f11.cfg": too many nested '
                                 'includes (the limit is 10; does a file include itself?)'
                                 % (tmp_path, tmp_path))


def test_a_file_including_itself(tmp_path):
    main = write(tmp_path / "loop.cfg", 'a\ninclude_file "loop.cfg"\n')
    with pytest.raises(ConfigError) as caught:
        scan_file(main)
    assert "too many nested includes" in str(caught.value)
    assert str(caught.value).startswith("%s/loop.cfg:2: " % tmp_path)


def test_unreadable_import_is_an_error(tmp_path):
    (tmp_path / "dir.cfg").mkdir()
    main = write(tmp_path / "main.cfg", 'import_file "%s/dir.cfg"\n' % tmp_path)
    with pytest.raises(ConfigError) as caught:
        scan_file(main)
    assert str(caught.value) == ('%s:1: cannot open included file "%s/dir.cfg" (%s/dir.cfg: '
                                 'Is a directory)' % (main, tmp_path, tmp_path))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('#!/*"\'$(){}[]\\\n abAB01x_-=,;:.')) |
               st.characters(), max_size=200),
       st.lists(st.sampled_from(["A", "B=1", "C=\"x\"", "A"]), max_size=2))
def test_random_text_raises_only_config_errors(text, defines):
    try:
        preprocess(text, "fuzz.cfg", defines)
    except ConfigError as e:
        assert str(e)


def test_an_ifdef_left_open_by_an_included_file_goes_on_in_the_includer(tmp_path):
    """The #!ifdef state is global in Kamailio, across include_file."""
    write(tmp_path / "open.cfg", "#!ifdef NO\nhidden\n")
    main = write(tmp_path / "main.cfg", 'include_file "%s/open.cfg"\nskipped\n#!endif\nshown\n'
                 % tmp_path)
    assert [t.value for t in scan_file(main).tokens] == ["shown"]


# (directive lines, environment, expected tokens) - the 5.x/6.0 directives
ENV_CASES = [
    ("#!defenv HOME\nHOME", {"HOME": "7"}, [("num", 7)]),
    ("#!defenv X=HOME\nX", {"HOME": "8"}, [("num", 8)]),
    ("#!defenvs X=HOME\nX", {"HOME": "/root"}, [("str", "/root")]),
    ("#!trydefenv X=NOPE\n#!ifdef X\na\n#!else\nb\n#!endif", {}, ids("b")),
    ("#!trydefenvs X=HOME\nX", {"HOME": "h"}, [("str", "h")]),
    ("#!define X 1\n#!undef X\n#!ifdef X\na\n#!else\nb\n#!endif", {}, ids("b")),
    ("#!tryundef X\nc", {}, ids("c")),
]


@pytest.mark.parametrize("text,environ,expected", ENV_CASES, ids=[c[0] for c in ENV_CASES])
def test_defenv_and_undef(text, environ, expected):
    tokens = preprocess(text, "t.cfg", environ=environ).tokens
    assert [(t.kind, t.value) for t in tokens] == expected


@pytest.mark.parametrize("mark", ["KAMAILIO", "OPENSER", "SER", "MAXCOMPAT", "ALL"])
def test_compat_line_is_taken_as_the_mode(mark):
    source = preprocess("#!%s\nchildren=1" % mark, "t.cfg")
    assert source.compat == mark and source.warnings == []
    assert [t.text for t in source.tokens] == ["children", "=", "1"]
