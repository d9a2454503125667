"""Tests for edge.config: lexer, parser/include, build/Conf, setters, docs."""

import os
import types as pytypes

import pytest

from edge.config import (EVENTS, HTTP, LOCATION, MAIN, SERVER, UPSTREAM, ConfigError,
                         Directive, Node, build, parse_file, parse_string, types)
from edge.config.docs import format_size, format_time, render
from edge.config.lexer import EOF, WORD, tokenize
from edge.config.types import parse_rate, parse_size, parse_time

# A small directive table in the shape of the real modules'.
DIRECTIVES = [
    Directive("worker_processes", (MAIN,), (1, 1), default="1"),
    Directive("pid", (MAIN,), (1, 1)),
    Directive("events", (MAIN,), (0, 0), block=EVENTS),
    Directive("worker_connections", (EVENTS,), (1, 1), types.number, default=512),
    Directive("http", (MAIN,), (0, 0), block=HTTP),
    Directive("upstream", (HTTP,), (1, 1), block=UPSTREAM, multi=True),
    Directive("server", (UPSTREAM,), (1, None), multi=True),
    Directive("keepalive", (UPSTREAM,), (1, 1), types.number),
    Directive("server", (HTTP,), (0, 0), block=SERVER, multi=True),
    Directive("listen", (SERVER,), (1, None), multi=True),
    Directive("server_name", (SERVER,), (1, None)),
    Directive("location", (SERVER, LOCATION), (1, 2), block=LOCATION, multi=True),
    Directive("proxy_pass", (LOCATION,), (1, 1)),
    Directive("proxy_buffering", (HTTP, SERVER, LOCATION), (1, 1), types.flag,
              default=True),
    Directive("client_max_body_size", (HTTP, SERVER, LOCATION), (1, 1), types.size,
              default=1024 * 1024),
    Directive("proxy_read_timeout", (HTTP, SERVER, LOCATION), (1, 1), types.time,
              default=60.0),
    Directive("add_header", (HTTP, SERVER, LOCATION), (2, 2), multi=True),
    Directive("jwt_auth", (LOCATION,), (0, 0)),
    Directive("log_level", (MAIN, HTTP), (1, 1), types.enum("debug", "info", "error"),
              default="error"),
]


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def error_of(fn, *args):
    with pytest.raises(ConfigError) as info:
        fn(*args)
    return str(info.value)


def build_text(tmp_path, text, directives=DIRECTIVES):
    path = write(tmp_path / "edge.conf", text)
    return build(parse_file(path), directives), path


def build_error(tmp_path, text, directives=DIRECTIVES):
    path = write(tmp_path / "edge.conf", text)
    return error_of(lambda: build(parse_file(path), directives)), path


def words(text):
    return [v for k, v, _ in tokenize(text) if k == WORD]


# -- lexer ---------------------------------------------------------------------------

def test_tokens_and_lines():
    toks = tokenize("a b;\n\nc {\n  d;\n}\n")
    assert toks == [
        (WORD, "a", 1), (WORD, "b", 1), (";", ";", 1),
        (WORD, "c", 3), ("{", "{", 3), (WORD, "d", 4), (";", ";", 4),
        ("}", "}", 5), (EOF, "", 6),
    ]


def test_quotes_remove_and_group():
    assert words("""a "x y" 'p q' "" '';""") == ["a", "x y", "p q", "", ""]


def test_quoted_escapes():
    assert words(r'''a "q\"q" 's\'s' "b\\s" "n\nt\tr\r";''') == \
        ["a", 'q"q', "s's", "b\\s", "n\nt\tr\r"]


def test_other_backslashes_kept():
    assert words(r'''location ~ "^/a\.b\d+$";''') == ["location", "~", r"^/a\.b\d+$"]
    assert words(r"location ~ ^/a\.b$;") == ["location", "~", r"^/a\.b$"]


def test_unquoted_backslash_escapes():
    # As nginx: an escaped space does not end the word and the backslash stays.
    assert words(r"a b\ c d\;e;") == ["a", r"b\ c", r"d\;e"]
    assert words(r'a \"x\";') == ["a", '"x"']


def test_comments():
    assert words("# c\na b; # c2 ;{}\n#\nc;") == ["a", "b", "c"]


def test_hash_inside_words_and_quotes():
    assert words("""a b#c "#d" '#e';""") == ["a", "b#c", "#d", "#e"]


def test_braces_and_semicolons_end_words():
    toks = tokenize("a b{c;}")
    assert [k for k, _, _ in toks] == [WORD, WORD, "{", WORD, ";", "}", EOF]


def test_close_brace_inside_word_is_text():
    assert words("a b};") == ["a", "b}"]


def test_variables_are_text():
    assert words("a $remote_addr ${host}x $b;") == ["a", "$remote_addr", "${host}x", "$b"]


def test_quoted_string_spans_lines():
    toks = tokenize('a "x\ny"\nb;')
    assert toks[1] == (WORD, "x\ny", 1)
    assert toks[2] == (WORD, "b", 3)


def test_crlf_and_tabs():
    assert words("a\tb;\r\nc;\r\n") == ["a", "b", "c"]


def test_unterminated_quote():
    assert error_of(tokenize, 'a "b;\n', "f.conf") == \
        'unexpected end of file, expecting ";" or "}" in f.conf:2'


def test_quote_must_be_followed_by_space():
    assert error_of(tokenize, 'a "b"c;', "f.conf") == 'unexpected "c" in f.conf:1'
    assert error_of(tokenize, 'a\n"b"};', "f.conf") == 'unexpected "}" in f.conf:2'


def test_quote_followed_by_semicolon_or_brace():
    assert words('a "b";') == ["a", "b"]
    assert [k for k, _, _ in tokenize("a 'b'{}")] == [WORD, WORD, "{", "}", EOF]


# -- parser --------------------------------------------------------------------------

def test_parse_tree(tmp_path):
    path = write(tmp_path / "edge.conf",
                 "worker_processes 2;\nhttp {\n  server {\n    listen 80;\n  }\n}\n")
    parsed = parse_file(path)
    assert parsed.nodes == [
        Node("worker_processes", ["2"], None, path, 1),
        Node("http", [], [
            Node("server", [], [Node("listen", ["80"], None, path, 4)], path, 3),
        ], path, 2),
    ]
    assert parsed.files == [(path, (tmp_path / "edge.conf").read_text())]


def test_empty_block_and_empty_file():
    assert parse_string("").nodes == []
    assert parse_string("events {}").nodes == [Node("events", [], [], "<string>", 1)]


def test_node_line_is_the_name_line():
    nodes = parse_string("a\n  b\n  c;").nodes
    assert nodes[0].line == 1 and nodes[0].args == ["b", "c"]


@pytest.mark.parametrize("text, message", [
    ("}", 'unexpected "}" in f.conf:1'),
    ("a;\n}", 'unexpected "}" in f.conf:2'),
    ("a {\n  b }", 'unexpected "}" in f.conf:2'),
    ("a;\n;", 'unexpected ";" in f.conf:2'),
    ("{ }", 'unexpected "{" in f.conf:1'),
    ("a b", 'unexpected end of file, expecting ";" or "}" in f.conf:1'),
    ("a {\n  b;\n", 'unexpected end of file, expecting "}" in f.conf:3'),
    ("a { b {", 'unexpected end of file, expecting "}" in f.conf:1'),
])
def test_syntax_errors(text, message):
    assert error_of(parse_string, text, "f.conf") == message


def test_missing_main_file(tmp_path):
    path = str(tmp_path / "nope.conf")
    assert error_of(parse_file, path) == \
        f'open() "{path}" failed (No such file or directory)'


# -- include -------------------------------------------------------------------------

def test_include_glob_sorted_relative_to_main_dir(tmp_path, monkeypatch):
    main = write(tmp_path / "etc" / "edge.conf",
                 "a 1;\nhttp {\n  include conf.d/*.conf;\n}\nb 2;\n")
    b = write(tmp_path / "etc" / "conf.d" / "b.conf", "from_b;\n")
    a = write(tmp_path / "etc" / "conf.d" / "a.conf", "from_a x;\nserver { s; }\n")
    write(tmp_path / "etc" / "conf.d" / "ignored.txt", "nope;\n")
    monkeypatch.chdir(tmp_path)  # not the config dir: resolution must not use the cwd
    parsed = parse_file(main)
    http = parsed.nodes[1]
    assert [n.name for n in parsed.nodes] == ["a", "http", "b"]
    assert [(n.name, n.file, n.line) for n in http.block] == \
        [("from_a", a, 1), ("server", a, 2), ("from_b", b, 1)]
    assert [f for f, _ in parsed.files] == [main, a, b]
    assert parsed.files[1][1] == "from_a x;\nserver { s; }\n"


def test_include_in_included_file_is_relative_to_main_dir(tmp_path):
    main = write(tmp_path / "edge.conf", "include sub/one.conf;\n")
    write(tmp_path / "sub" / "one.conf", "include sub/two.conf;\n")  # not sub/sub/
    two = write(tmp_path / "sub" / "two.conf", "\n\nleaf;\n")
    nodes = parse_file(main).nodes
    assert nodes == [Node("leaf", [], None, two, 3)]


def test_include_absolute_path(tmp_path):
    inc = write(tmp_path / "other" / "x.conf", "x;")
    main = write(tmp_path / "etc" / "edge.conf", f"include {inc};")
    assert parse_file(main).nodes == [Node("x", [], None, inc, 1)]


def test_include_glob_matching_nothing(tmp_path):
    main = write(tmp_path / "edge.conf", "include conf.d/*.conf;\na;\n")
    assert [n.name for n in parse_file(main).nodes] == ["a"]


def test_include_missing_file(tmp_path):
    main = write(tmp_path / "edge.conf", "a;\nhttp {\n    include missing.conf;\n}\n")
    missing = os.path.join(str(tmp_path), "missing.conf")
    assert error_of(parse_file, main) == \
        f'open() "{missing}" failed (No such file or directory) in {main}:3'


def test_error_inside_included_file_names_that_file(tmp_path):
    main = write(tmp_path / "edge.conf", "include inc.conf;\n")
    inc = write(tmp_path / "inc.conf", "a;\nb {\n")
    assert error_of(parse_file, main) == \
        f'unexpected end of file, expecting "}}" in {inc}:3'


def test_included_file_cannot_close_a_block(tmp_path):
    main = write(tmp_path / "edge.conf", "http {\n  include inc.conf;\n}\n")
    inc = write(tmp_path / "inc.conf", "}\n")
    assert error_of(parse_file, main) == f'unexpected "}}" in {inc}:1'


def test_include_recursion_limit(tmp_path):
    main = write(tmp_path / "edge.conf", "include edge.conf;\n")
    assert error_of(parse_file, main) == \
        f"include nesting is deeper than 32 levels in {main}:1"


def test_include_bad_arguments(tmp_path):
    main = write(tmp_path / "edge.conf", "a;\ninclude a b;\n")
    assert error_of(parse_file, main) == \
        f'invalid number of arguments in "include" directive in {main}:2'
    main = write(tmp_path / "edge.conf", "include x { }\n")
    assert error_of(parse_file, main) == f'unexpected "{{" in {main}:1'


def test_file_included_twice_listed_once(tmp_path):
    main = write(tmp_path / "edge.conf", "include x.conf;\ninclude x.conf;\n")
    x = write(tmp_path / "x.conf", "x;\n")
    parsed = parse_file(main)
    assert len(parsed.nodes) == 2
    assert [f for f, _ in parsed.files] == [main, x]


def test_parse_string_includes_relative_to_path(tmp_path):
    inc = write(tmp_path / "inc.conf", "x;")
    parsed = parse_string("include inc.conf;", str(tmp_path / "edge.conf"))
    assert parsed.nodes == [Node("x", [], None, inc, 1)]


# -- build and Conf ------------------------------------------------------------------

FULL = """\
worker_processes 4;
events { worker_connections 1024; }
http {
    client_max_body_size 10m;
    proxy_read_timeout 30s;
    add_header X-A a;
    add_header X-B b;
    upstream api {
        server 10.0.0.1:8080 weight=3;
        server 10.0.0.2:8080;
        keepalive 64;
    }
    server {
        listen 80 reuseport;
        listen 443;
        server_name api.example.com;
        proxy_buffering off;
        location /v1/ {
            proxy_read_timeout 1m30s;
            add_header X-C c;
            jwt_auth;
            proxy_pass http://api;
            location /v1/inner { proxy_pass http://api; }
        }
        location = /readyz { proxy_pass http://api; }
    }
}
"""


def test_build_tree(tmp_path):
    root, path = build_text(tmp_path, FULL)
    assert (root.context, root.name, root.parent, root.file) == (MAIN, None, None, path)
    assert root.local("worker_processes") == "4"
    assert [c.context for c in root.children] == [EVENTS, HTTP]
    events, http = root.children
    assert events.local("worker_connections") == 1024
    assert http.local("client_max_body_size") == 10 * 1024 * 1024

    upstream, server = http.children
    assert (upstream.context, upstream.name, upstream.args) == (UPSTREAM, "upstream", ["api"])
    assert (upstream.file, upstream.line, upstream.parent) == (path, 8, http)
    assert upstream.value == "api" and http.local("upstream") == ["api"]
    assert upstream.local("server") == [["10.0.0.1:8080", "weight=3"], ["10.0.0.2:8080"]]
    assert upstream.local("keepalive") == 64

    assert server.context == SERVER and server.local("listen") == [["80", "reuseport"],
                                                                   ["443"]]
    assert http.blocks("server") == [server] and http.blocks("upstream") == [upstream]
    v1, readyz = server.children
    assert (v1.args, readyz.args) == (["/v1/"], ["=", "/readyz"])
    assert v1.local("jwt_auth") is True and readyz.local("jwt_auth") is None
    assert server.local("location") == [["/v1/"], ["=", "/readyz"]]  # nargs (1, 2)
    (inner,) = v1.children
    assert inner.context == LOCATION and inner.parent is v1


def test_get_inherits_from_nearest_block_and_defaults(tmp_path):
    root, _ = build_text(tmp_path, FULL)
    http = root.children[1]
    server = http.blocks("server")[0]
    v1, readyz = server.children
    inner = v1.children[0]
    # set in location, inherited by the nested location
    assert v1.get("proxy_read_timeout") == 90.0
    assert inner.get("proxy_read_timeout") == 90.0
    # set in http only
    assert readyz.get("proxy_read_timeout") == 30.0
    assert readyz.get("client_max_body_size") == 10 * 1024 * 1024
    # set in server
    assert inner.get("proxy_buffering") is False
    assert http.get("proxy_buffering") is True  # default
    # multi: the nearest level that sets it wins, whole (nginx add_header semantics)
    assert v1.get("add_header") == [["X-C", "c"]]
    assert readyz.get("add_header") == [["X-A", "a"], ["X-B", "b"]]
    # unset everywhere: default; local() does not inherit
    assert readyz.get("log_level") == "error"
    assert readyz.local("proxy_read_timeout") is None
    assert root.get("worker_processes") == "4"
    assert readyz.get("worker_processes") == "4"  # walks up regardless of context


def test_default_of_the_declaration_that_fits(tmp_path):
    directives = [
        Directive("http", (MAIN,), (0, 0), block=HTTP),
        Directive("server", (HTTP,), (0, 0), block=SERVER),
        Directive("timeout", (MAIN,), (1, 1), types.time, default=1.0),
        Directive("timeout", (HTTP, SERVER), (1, 1), types.time, default=2.0),
    ]
    root, _ = build_text(tmp_path, "http { server { } }", directives)
    server = root.children[0].children[0]
    assert root.get("timeout") == 1.0
    assert server.get("timeout") == 2.0


def test_is_set_node_and_directives_set(tmp_path):
    root, path = build_text(tmp_path, FULL)
    http = root.children[1]
    assert http.is_set("proxy_read_timeout") and not http.is_set("proxy_buffering")
    assert http.node("proxy_read_timeout") == Node("proxy_read_timeout", ["30s"], None,
                                                   path, 5)
    assert [n.line for n in http.node("add_header")] == [6, 7]
    assert http.node("proxy_buffering") is None
    assert http.directives_set() == ["client_max_body_size", "proxy_read_timeout",
                                     "add_header", "upstream", "server"]


def test_undeclared_name_is_a_key_error(tmp_path):
    root, _ = build_text(tmp_path, "")
    with pytest.raises(KeyError):
        root.get("proxy_pas")
    with pytest.raises(KeyError):
        root.local("proxy_pas")


def test_block_parse_result_is_the_value(tmp_path):
    def parse_location(node):
        return tuple(node.args)

    directives = [Directive("location", (MAIN,), (1, 2), parse_location, block=LOCATION,
                            multi=True),
                  Directive("x", (LOCATION,), (0, 0))]
    root, _ = build_text(tmp_path, "location = /a { x; }\nlocation /b {}\n", directives)
    assert [c.value for c in root.children] == [("=", "/a"), ("/b",)]
    assert root.local("location") == [("=", "/a"), ("/b",)]
    assert root.children[0].local("x") is True


def test_default_value_rules(tmp_path):
    directives = [Directive("one", (MAIN,), (1, 1)), Directive("none", (MAIN,), (0, 0)),
                  Directive("opt", (MAIN,), (0, 1)), Directive("many", (MAIN,), (1, None))]
    root, _ = build_text(tmp_path, "one a;\nnone;\nopt;\nmany a b c;\n", directives)
    assert [root.local(n) for n in ("one", "none", "opt", "many")] == \
        ["a", True, [], ["a", "b", "c"]]


@pytest.mark.parametrize("text, message, line", [
    ("proxy_pas http://x;", 'unknown directive "proxy_pas"', 1),
    ("http {\n  server {\n    proxy_pas x;\n  }\n}", 'unknown directive "proxy_pas"', 3),
    ("http {\n  proxy_pass http://x;\n}", '"proxy_pass" directive is not allowed here', 2),
    ("http {\n  worker_processes 2;\n}", '"worker_processes" directive is not allowed here',
     2),
    ("http {\n  keepalive 2;\n}", '"keepalive" directive is not allowed here', 2),
    ("worker_processes;", 'invalid number of arguments in "worker_processes" directive', 1),
    ("worker_processes 1 2;", 'invalid number of arguments in "worker_processes" directive',
     1),
    ("http { server { location a b c {} } }",
     'invalid number of arguments in "location" directive', 1),
    ("events x {}", 'invalid number of arguments in "events" directive', 1),
    ("pid a;\npid b;", '"pid" directive is duplicate', 2),
    ("http {}\nhttp {}", '"http" directive is duplicate', 2),
    ("http;", 'directive "http" has no opening "{"', 1),
    ("http {\n  upstream api;\n}", 'directive "upstream" has no opening "{"', 2),
    ("pid x {\n}", 'unexpected "{"', 1),
    ("http {\n  upstream u {\n    server a { }\n  }\n}", 'unexpected "{"', 3),
    ("http {\n  proxy_buffering yes;\n}",
     'invalid value "yes" in "proxy_buffering" directive, it must be "on" or "off"', 2),
    ("http {\n\n client_max_body_size 10x;\n}",
     '"client_max_body_size" directive invalid value', 3),
    ("http { proxy_read_timeout soon; }", '"proxy_read_timeout" directive invalid value', 1),
    ("events {\n worker_connections -1;\n}", '"worker_connections" directive invalid number',
     2),
    ("log_level loud;",
     'invalid value "loud" in "log_level" directive, it must be one of "debug", "info", '
     '"error"', 1),
])
def test_build_errors(tmp_path, text, message, line):
    error, path = build_error(tmp_path, text)
    assert error == f"{message} in {path}:{line}"


def test_build_error_in_included_file(tmp_path):
    main = write(tmp_path / "edge.conf", "http {\n  include sites/*.conf;\n}\n")
    site = write(tmp_path / "sites" / "a.conf", "server {\n  listen 80;\n  bogus;\n}\n")
    assert error_of(lambda: build(parse_file(main), DIRECTIVES)) == \
        f'unknown directive "bogus" in {site}:3'


def test_setter_error_gets_node_location(tmp_path):
    # A custom parse raising a bare ConfigError (or using parse_time on an arg part).
    def parse_server(node):
        for arg in node.args[1:]:
            if arg.startswith("fail_timeout="):
                return parse_time(arg[len("fail_timeout="):])
        raise ConfigError(f'invalid parameter in "{node.name}"')

    directives = [Directive("server", (MAIN,), (1, None), parse_server, multi=True)]
    error, path = build_error(tmp_path, "\nserver a fail_timeout=x;", directives)
    assert error == f'invalid time "x" in {path}:2'
    error, path = build_error(tmp_path, "server a;", directives)
    assert error == f'invalid parameter in "server" in {path}:1'


def test_same_name_twice_for_one_context_is_rejected():
    with pytest.raises(ValueError):
        build(parse_string(""), [Directive("a", (MAIN,), (0, 0)),
                                 Directive("a", (MAIN, HTTP), (1, 1))])


def test_directive_is_frozen_and_normalised():
    d = Directive("a", "http", [1, None])
    assert d.contexts == ("http",) and d.nargs == (1, None)
    with pytest.raises(Exception):
        d.name = "b"
    with pytest.raises(ValueError):
        Directive("a", (MAIN,), (2, 1))


def test_config_error_str():
    assert str(ConfigError("boom")) == "boom"
    assert str(ConfigError("boom", "/f.conf", 3)) == "boom in /f.conf:3"
    assert isinstance(ConfigError("x"), ValueError)


# -- setters ---------------------------------------------------------------------------

def node(*args, name="d"):
    return Node(name, list(args), None, "f.conf", 7)


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("512", 512), ("16k", 16384), ("16K", 16384), ("10m", 10485760),
    ("10M", 10485760), ("1g", 1 << 30), ("2G", 2 << 30),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "k", "1.5k", "-1", "1kb", "1 k", "1t", " 1"])
def test_parse_size_invalid(text):
    with pytest.raises(ConfigError, match="invalid size"):
        parse_size(text)


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("30", 30), ("30s", 30), ("500ms", 0.5), ("1m", 60), ("1h", 3600),
    ("1d", 86400), ("1w", 604800), ("1M", 30 * 86400), ("1y", 365 * 86400),
    ("1m30s", 90), ("1m30", 90), ("1h 30m", 5400), ("1s500ms", 1.5),
    ("1y1M1w1d1h1m1s1ms", 365 * 86400 + 30 * 86400 + 604800 + 86400 + 3600 + 61.001),
])
def test_parse_time(text, value):
    assert parse_time(text) == pytest.approx(value)
    assert isinstance(parse_time(text), float)


@pytest.mark.parametrize("text", ["", " ", "s", "1x", "30s1m", "1s1s", "1.5s", "-1s",
                                  "30 1m", "1ms1s", "30s5"])
def test_parse_time_invalid(text):
    with pytest.raises(ConfigError, match="invalid time"):
        parse_time(text)


@pytest.mark.parametrize("text, value", [("100r/s", 100.0), ("10r/m", 10 / 60),
                                         ("0r/s", 0.0)])
def test_parse_rate(text, value):
    assert parse_rate(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "100", "100r", "100r/h", "1.5r/s", "r/s", "100/s"])
def test_parse_rate_invalid(text):
    with pytest.raises(ConfigError, match="invalid rate"):
        parse_rate(text)


def test_setters():
    assert types.flag(node("on")) is True and types.flag(node("OFF")) is False
    assert types.size(node("4k")) == 4096
    assert types.time(node("2m")) == 120.0
    assert types.rate(node("6r/m")) == pytest.approx(0.1)
    assert types.number(node("42")) == 42
    assert types.string(node("a b")) == "a b"
    assert types.strings(node("a", "b")) == ["a", "b"]
    assert types.enum("Round_Robin", "hash")(node("round_robin")) == "Round_Robin"


@pytest.mark.parametrize("setter, arg, message", [
    (types.flag, "1", 'invalid value "1" in "d" directive, it must be "on" or "off"'),
    (types.size, "1x", '"d" directive invalid value'),
    (types.time, "1x", '"d" directive invalid value'),
    (types.rate, "1r/x", '"d" directive invalid value'),
    (types.number, "-3", '"d" directive invalid number'),
    (types.number, "1.0", '"d" directive invalid number'),
    (types.enum("a", "b"), "c", 'invalid value "c" in "d" directive, it must be one of '
                                '"a", "b"'),
])
def test_setter_errors_carry_node_location(setter, arg, message):
    assert error_of(setter, node(arg)) == f"{message} in f.conf:7"


# -- docs ------------------------------------------------------------------------------

def test_format_helpers():
    assert [format_size(n) for n in (0, 512, 16384, 10 << 20, 1 << 30, 1536)] == \
        ["0", "512", "16k", "10m", "1g", "1536"]
    assert [format_time(s) for s in (0, 0.5, 30, 60.0, 90, 86400, 1.25)] == \
        ["0s", "500ms", "30s", "1m", "1m30s", "1d", "1s250ms"]


def test_render_docs():
    proxy = pytypes.ModuleType("edge.modules.proxy", "Proxying to upstreams.\n\nMore.")
    proxy.DIRECTIVES = [
        Directive("proxy_pass", (LOCATION,), (1, 1), doc="Where to send the request."),
        Directive("proxy_buffering", (HTTP, SERVER, LOCATION), (1, 1), types.flag,
                  default=True),
        Directive("proxy_read_timeout", (HTTP,), (1, 1), types.time, default=60.0),
        Directive("client_max_body_size", (HTTP,), (1, 1), types.size, default=1 << 20),
        Directive("mode", (HTTP,), (1, 1), types.enum("a", "b"), default="a"),
        Directive("upstream", (HTTP,), (1, 1), block=UPSTREAM, multi=True),
        Directive("proxy_set_header", (HTTP,), (2, 2), multi=True),
        Directive("any", (HTTP,), (0, None)),
        Directive("listen", (SERVER,), (1, None), multi=True,
                  syntax="listen address[:port] [reuseport];"),
    ]
    empty = pytypes.ModuleType("edge.modules.empty")
    empty.DIRECTIVES = []
    md = render([proxy, empty])

    assert md.startswith("# Directives\n")
    assert "## proxy — Proxying to upstreams.\n" in md
    assert "empty" not in md
    assert ("### proxy_pass\n\n- **Syntax:** `proxy_pass value;`\n"
            "- **Default:** —\n- **Context:** location\n\nWhere to send the request.\n") in md
    assert "- **Syntax:** `proxy_buffering on | off;`" in md
    assert "- **Default:** `proxy_buffering on;`" in md
    assert "- **Context:** http, server, location" in md
    assert "- **Default:** `proxy_read_timeout 1m;`" in md
    assert "- **Syntax:** `proxy_read_timeout time;`" in md
    assert "- **Default:** `client_max_body_size 1m;`" in md
    assert "- **Syntax:** `mode a | b;`" in md
    assert "- **Syntax:** `upstream value { ... }`" in md
    assert "- **Syntax:** `proxy_set_header value value;`" in md
    assert "- **Syntax:** `any [value ...];`" in md
    assert "- **Syntax:** `listen address[:port] [reuseport];`" in md
